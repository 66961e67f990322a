/*
 * fuzz_http — a libFuzzer target for examples/http_parse.h.
 *
 *   clang -fsanitize=fuzzer,address,undefined (built by `make test-build`
 *   as build/fuzz/fuzz_http when clang has libFuzzer; run by test_httpd)
 *
 * The input is a stream of pipelined requests. Each request head is parsed
 * (1) whole, (2) fed byte by byte into one http_req (the incremental path
 * httpd uses), and (3) split in two at every position (or at 64 spread
 * positions for long inputs), each piece in an exactly-sized heap copy so
 * ASan sees any read past the bytes given. Invariants (abort on breach):
 * every way gives the same result; a result is > 0 (at most the bytes
 * given), 0 (only while fewer than max bytes were given) or one of -400,
 * -431, -505; a parsed request's method, target and path lie inside its
 * head, which ends with CRLF CRLF; the target starts with '/' and holds
 * no space or control byte; minor is 0 or 1.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../examples/http_parse.h"

#define CHECK(c)                                                              \
  do {                                                                         \
    if (!(c)) {                                                                \
      fprintf(stderr, "fuzz_http: invariant broken: %s (line %d)\n", #c,      \
              __LINE__);                                                       \
      abort();                                                                 \
    }                                                                          \
  } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Parse an exactly-sized copy of the first @len bytes of @p into @r. */
static long parse_copy(struct http_req *r, const uint8_t *p, size_t len, size_t max) {
  char *b = malloc(len ? len : 1);
  CHECK(b != NULL);
  memcpy(b, p, len);
  long rc = http_parse(r, b, len, max);
  if (rc > 0) { /* re-point the fields at the caller's bytes before b goes */
    r->method = (const char *)p + (r->method - b);
    r->target = (const char *)p + (r->target - b);
  }
  free(b);
  return rc;
}

static void check_result(long rc, const struct http_req *r, const uint8_t *p, size_t len,
                         size_t max) {
  CHECK(rc == 0 || rc == -400 || rc == -431 || rc == -505 || rc > 0);
  if (rc == 0) CHECK(len < max);
  if (rc <= 0) return;
  const char *lo = (const char *)p, *hi = lo + rc;
  CHECK((size_t)rc <= len && (size_t)rc <= max && rc >= 4);
  CHECK(r->method == lo && r->method_len >= 1 && r->method_len <= 16);
  CHECK(r->target > r->method && r->target + r->target_len <= hi);
  CHECK(r->target_len >= 1 && r->target[0] == '/' && r->path_len <= r->target_len);
  CHECK(r->minor == 0 || r->minor == 1);
  CHECK(memcmp(hi - 4, "\r\n\r\n", 4) == 0);
  for (size_t i = 0; i < r->target_len; i++)
    CHECK((unsigned char)r->target[i] > 0x20 && (unsigned char)r->target[i] < 0x7f);
}

static bool same(long a, const struct http_req *ra, long b, const struct http_req *rb) {
  if (a != b) return false;
  if (a <= 0) return true;
  return ra->method == rb->method && ra->method_len == rb->method_len &&
         ra->target == rb->target && ra->target_len == rb->target_len &&
         ra->path_len == rb->path_len && ra->minor == rb->minor &&
         ra->keep_alive == rb->keep_alive && ra->te == rb->te &&
         ra->content_length == rb->content_length;
}

/* One request at @p (@len bytes available): returns the whole-parse result. */
static long one(const uint8_t *p, size_t len, size_t max) {
  struct http_req whole, inc, two;
  http_req_init(&whole);
  long w = parse_copy(&whole, p, len, max);
  check_result(w, &whole, p, len, max);

  /* Byte by byte into one state, as a server reading 1-byte segments. */
  http_req_init(&inc);
  long rc = 0;
  size_t k = 0;
  while (k < len && rc == 0) rc = parse_copy(&inc, p, ++k, max);
  if (rc > 0 || w > 0) CHECK(same(rc, &inc, w, &whole));
  if (rc < 0) CHECK(w < 0);
  if (rc == 0) CHECK(w == 0);

  /* Two pieces: a prefix (whose answer must be need-more, the same
   * complete request, or an error where the whole is an error too) then
   * everything, with the state carried over. */
  size_t step = len <= 512 ? 1 : len / 64;
  for (size_t cut = 0; cut <= len; cut += step) {
    http_req_init(&two);
    long a = parse_copy(&two, p, cut, max);
    check_result(a, &two, p, cut, max);
    if (a > 0) {
      CHECK(same(a, &two, w, &whole));
      continue;
    }
    if (a < 0) {
      CHECK(w < 0);
      continue;
    }
    long b = parse_copy(&two, p, len, max);
    CHECK(same(b, &two, w, &whole));
  }
  return w;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* The first byte picks the head limit, so the limit paths are reached
   * with short inputs too: 16..4096 bytes. */
  if (size == 0) return 0;
  size_t max = 16 + (size_t)data[0] * 16;
  data++, size--;
  size_t off = 0;
  for (int n = 0; n < 64 && off < size; n++) {
    long rc = one(data + off, size - off, max);
    if (rc <= 0) break;
    off += (size_t)rc;
  }
  return 0;
}
