/* Socket addresses: numeric only (a loop must never block on DNS). */
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "proactor/proactor_int.h"

int ax_addr_ip(const char *host, unsigned port, ax_addr_t *out) {
  char tmp[INET6_ADDRSTRLEN + 2];
  size_t n;
  if (host == NULL || out == NULL)
    return -EINVAL;
  if (port > 65535)
    return -ERANGE;
  memset(out, 0, sizeof(*out));
  if (inet_pton(AF_INET, host, &out->u.in4.sin_addr) == 1) {
    out->u.in4.sin_family = AF_INET;
    out->u.in4.sin_port = htons((uint16_t)port);
    out->len = sizeof(out->u.in4);
    return 0;
  }
  /* "[::1]" as well as "::1". */
  n = strlen(host);
  if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
    if (n - 2 >= sizeof(tmp))
      return -EINVAL;
    memcpy(tmp, host + 1, n - 2);
    tmp[n - 2] = '\0';
    host = tmp;
  }
  if (inet_pton(AF_INET6, host, &out->u.in6.sin6_addr) == 1) {
    out->u.in6.sin6_family = AF_INET6;
    out->u.in6.sin6_port = htons((uint16_t)port);
    out->len = sizeof(out->u.in6);
    return 0;
  }
  return -EINVAL;
}

int ax_addr_unix(const char *path, ax_addr_t *out) {
  size_t n;
  if (path == NULL || out == NULL || path[0] == '\0')
    return -EINVAL;
  n = strlen(path);
  if (n >= sizeof(out->u.un.sun_path))
    return -ENAMETOOLONG;
  memset(out, 0, sizeof(*out));
  out->u.un.sun_family = AF_UNIX;
  memcpy(out->u.un.sun_path, path, n);
  if (path[0] == '@') {
    /* Abstract: a leading NUL, and the length says where the name ends. */
    out->u.un.sun_path[0] = '\0';
    out->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
  } else {
    out->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
  }
  return 0;
}

int ax_addr_format(const ax_addr_t *a, char *buf, size_t len) {
  char ip[INET6_ADDRSTRLEN];
  int n;
  if (a == NULL || buf == NULL)
    return -EINVAL;
  switch (a->u.sa.sa_family) {
  case AF_INET:
    inet_ntop(AF_INET, &a->u.in4.sin_addr, ip, sizeof(ip));
    n = snprintf(buf, len, "%s:%u", ip, ntohs(a->u.in4.sin_port));
    break;
  case AF_INET6:
    inet_ntop(AF_INET6, &a->u.in6.sin6_addr, ip, sizeof(ip));
    n = snprintf(buf, len, "[%s]:%u", ip, ntohs(a->u.in6.sin6_port));
    break;
  case AF_UNIX: {
    size_t off = offsetof(struct sockaddr_un, sun_path);
    size_t pl = a->len > off ? a->len - off : 0;
    const char *p = a->u.un.sun_path;
    if (pl > 0 && p[0] == '\0') /* abstract */
      n = snprintf(buf, len, "@%.*s", (int)(pl - 1), p + 1);
    else
      n = snprintf(buf, len, "%.*s", (int)strnlen(p, pl), p);
    break;
  }
  default:
    return -EAFNOSUPPORT;
  }
  if (n < 0 || (size_t)n >= len)
    return -ENOSPC;
  return n;
}

unsigned ax_addr_port(const ax_addr_t *a) {
  if (a == NULL)
    return 0;
  if (a->u.sa.sa_family == AF_INET)
    return ntohs(a->u.in4.sin_port);
  if (a->u.sa.sa_family == AF_INET6)
    return ntohs(a->u.in6.sin6_port);
  return 0;
}
