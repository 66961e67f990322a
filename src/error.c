/* Error descriptions, generated from the one list in axon/error.h. */
#include <axon/error.h>

const char *ax_strerror(int err) {
  if (err == 0)
    return "success";
#define AX_STRERROR_CASE(name, code, msg)                                      \
  if (err == (code))                                                           \
    return msg;
  AX_ERRNO_MAP(AX_STRERROR_CASE)
#undef AX_STRERROR_CASE
  return "unknown error";
}

const char *ax_err_name(int err) {
  if (err == 0)
    return "OK";
#define AX_ERRNAME_CASE(name, code, msg)                                       \
  if (err == (code))                                                           \
    return #name;
  AX_ERRNO_MAP(AX_ERRNAME_CASE)
#undef AX_ERRNAME_CASE
  return "UNKNOWN";
}

const char *ax_version_string(void) { return AX_VERSION_STRING; }
