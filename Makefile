# axon — one plain Makefile.
#
#   make                 library (static + shared), examples, tools
#   make test            plain, ASan/UBSan and TSan suites, one aggregate line
#   make test SAN=thread only the ThreadSanitizer suite (SAN=address likewise)
#   make bench [BENCH=name]
#   make demo            short showcase of the examples
#   make install [PREFIX=/usr/local DESTDIR=]
#   make clean
#
# Objects of each variant live in their own directory: build/ (plain),
# build/address, build/thread.

CC      ?= cc
PREFIX  ?= /usr/local
LIBDIR  ?= $(PREFIX)/lib
INCDIR  ?= $(PREFIX)/include
SAN     ?=
BENCH   ?=

ifeq ($(SAN),)
BUILD   := build
SANFLAGS :=
else ifeq ($(SAN),address)
BUILD   := build/address
SANFLAGS := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
else ifeq ($(SAN),thread)
BUILD   := build/thread
SANFLAGS := -fsanitize=thread -fno-omit-frame-pointer
else
$(error SAN must be empty, address or thread)
endif

SOVERSION := 0
VERSION   := 0.1.0

HAVE_URING := $(shell echo 'int main(void){return 0;}' | \
                $(CC) -include liburing.h -x c - -o /dev/null -luring >/dev/null 2>&1 && echo 1)

WARN     := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes
OPT      ?= -O2 -g
AX_CFLAGS := -std=c11 -D_GNU_SOURCE $(WARN) $(OPT) -fPIC -fvisibility=hidden \
             -Iinclude $(SANFLAGS) $(if $(HAVE_URING),-DAX_HAVE_URING=1)
LIBS     := -lck -lpthread $(if $(HAVE_URING),-luring)
ALL_CFLAGS  = $(AX_CFLAGS) $(CFLAGS)
ALL_LDFLAGS = $(SANFLAGS) $(LDFLAGS)

LIB_SRCS := $(wildcard src/loop/*.c src/mailbox/*.c src/proactor/*.c src/actor/*.c src/*.c)
LIB_OBJS := $(patsubst src/%.c,$(BUILD)/obj/%.o,$(LIB_SRCS))
EXAMPLES := $(patsubst examples/%.c,$(BUILD)/examples/%,$(wildcard examples/*.c))
TOOLS    := $(patsubst tools/%.c,$(BUILD)/tools/%,$(wildcard tools/*.c))
TESTS    := $(patsubst tests/%.c,$(BUILD)/tests/%,$(wildcard tests/test_*.c))

STATIC := $(BUILD)/libaxon.a
SHARED := $(BUILD)/libaxon.so.$(VERSION)
DEPS_OK := build/.deps-ok

.PHONY: FORCE all lib examples tools test test-build bench demo install uninstall clean deps
.DEFAULT_GOAL := all

all: lib examples tools

# Installs (or names the command for) what is missing, once per checkout.
$(DEPS_OK): tools/deps.sh
	@bash tools/deps.sh build
	@mkdir -p build && touch $@
deps: $(DEPS_OK)

lib: $(STATIC) $(SHARED)

# Rebuild everything when the flags change (CC, CFLAGS, liburing found or not).
FLAGS_STAMP := $(BUILD)/.flags
$(FLAGS_STAMP): FORCE
	@mkdir -p $(BUILD)
	@echo '$(CC) $(ALL_CFLAGS) $(ALL_LDFLAGS) $(LIBS)' | cmp -s - $@ || \
	  echo '$(CC) $(ALL_CFLAGS) $(ALL_LDFLAGS) $(LIBS)' > $@
FORCE:

$(BUILD)/obj/%.o: src/%.c $(FLAGS_STAMP) | $(DEPS_OK)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -DAX_BUILDING -Isrc -MMD -MP -c $< -o $@

$(STATIC): $(LIB_OBJS)
	@rm -f $@
	$(AR) rcs $@ $^

$(SHARED): $(LIB_OBJS) src/axon.map
	$(CC) -shared -Wl,-soname,libaxon.so.$(SOVERSION) -Wl,--version-script=src/axon.map \
	  -Wl,--no-undefined $(ALL_LDFLAGS) -o $@ $(LIB_OBJS) $(LIBS)
	ln -sf libaxon.so.$(VERSION) $(BUILD)/libaxon.so.$(SOVERSION)
	ln -sf libaxon.so.$(SOVERSION) $(BUILD)/libaxon.so

examples: $(EXAMPLES)
$(BUILD)/examples/%: examples/%.c $(STATIC) $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $< -o $@ $(ALL_LDFLAGS) $(STATIC) $(LIBS)

tools: $(TOOLS)
$(BUILD)/tools/%: tools/%.c $(STATIC) $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $< -o $@ $(ALL_LDFLAGS) $(STATIC) $(LIBS)

# Tests may include library sources or internal headers (-Isrc) to reach
# internals; they link the static library.
$(BUILD)/tests/%: tests/%.c $(wildcard tests/*.h) $(STATIC) $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Isrc -DAX_BUILD_DIR='"$(BUILD)"' -DAX_SAN='"$(SAN)"' \
	  $< -o $@ $(ALL_LDFLAGS) $(STATIC) $(LIBS) -lcmocka

# The libFuzzer target of examples/http_parse.h (run by test_httpd), built
# with clang when it has libFuzzer; the plain variant only.
FUZZ_CC  ?= clang
HAVE_LIBFUZZER := $(if $(SAN),,$(shell echo 'int LLVMFuzzerTestOneInput(const char *d, long n){return 0;}' | \
                $(FUZZ_CC) -fsanitize=fuzzer -x c - -o /dev/null >/dev/null 2>&1 && echo 1))
FUZZ     := $(if $(HAVE_LIBFUZZER),build/fuzz/fuzz_http)
build/fuzz/fuzz_http: tests/fuzz_http.c examples/http_parse.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -std=c11 -D_GNU_SOURCE $(WARN) -O1 -g -fsanitize=fuzzer,address,undefined \
	  -fno-sanitize-recover=all $< -o $@

test-build: lib examples tools $(TESTS) $(FUZZ)

# Without SAN: the plain, ASan+UBSan and ThreadSanitizer suites, one
# aggregate line at the end.
ifeq ($(SAN),)
test: $(DEPS_OK)
	@bash tools/deps.sh test
	@$(MAKE) --no-print-directory test-build
	@$(MAKE) --no-print-directory test-build SAN=address
	@$(MAKE) --no-print-directory test-build SAN=thread
	@bash tools/run-tests.sh build build/address build/thread
else
test: $(DEPS_OK)
	@bash tools/deps.sh test
	@$(MAKE) --no-print-directory test-build SAN=$(SAN)
	@bash tools/run-tests.sh $(BUILD)
endif

bench: lib examples tools
	@bash tools/deps.sh bench
	@$(MAKE) --no-print-directory -C bench BUILD=$(abspath $(BUILD)) CC=$(CC) \
	  HAVE_URING=$(HAVE_URING)
	@bash bench/run.sh $(abspath $(BUILD))/bench $(BENCH)

demo: all
	@bash tools/demo.sh $(BUILD)

install: lib
	install -d $(DESTDIR)$(INCDIR)/axon $(DESTDIR)$(LIBDIR)/pkgconfig
	install -m 644 include/axon/*.h $(DESTDIR)$(INCDIR)/axon/
	install -m 644 $(STATIC) $(DESTDIR)$(LIBDIR)/
	install -m 755 $(SHARED) $(DESTDIR)$(LIBDIR)/
	ln -sf libaxon.so.$(VERSION) $(DESTDIR)$(LIBDIR)/libaxon.so.$(SOVERSION)
	ln -sf libaxon.so.$(SOVERSION) $(DESTDIR)$(LIBDIR)/libaxon.so
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCDIR@|$(INCDIR)|' \
	    -e 's|@VERSION@|$(VERSION)|' -e 's|@URING@|$(if $(HAVE_URING),liburing)|' \
	    axon.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/axon.pc

uninstall:
	rm -rf $(DESTDIR)$(INCDIR)/axon
	rm -f $(DESTDIR)$(LIBDIR)/libaxon.* $(DESTDIR)$(LIBDIR)/pkgconfig/axon.pc

clean:
	rm -rf build

-include $(LIB_OBJS:.o=.d)
