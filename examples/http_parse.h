/*
 * http_parse.h — an HTTP/1.x request-head parser for examples/httpd.c and
 * tests/fuzz_http.c. Header-only, no allocation, bounded.
 *
 * Incremental: the caller keeps one struct http_req per request and calls
 * http_parse() with the bytes of that request so far (the same start, more
 * bytes each time, a request split anywhere); the search for the blank
 * line that ends the head goes on where the previous call stopped, so a
 * request fed byte by byte costs O(length), not O(length²). Nothing is
 * parsed before the head is complete: then it is parsed once, strictly.
 *
 * Returns the length of the head (> 0, complete: the fields are set and
 * point into the caller's bytes), 0 (need more: call again with more), or
 * minus an HTTP status: -400 (malformed), -431 (head longer than @max
 * bytes, or more than HTTP_MAX_HEADERS header lines), -505 (an HTTP version
 * other than 1.0 and 1.1).
 *
 * Bodies: Content-Length is parsed (digits only; a second, different value
 * is -400) and Transfer-Encoding is flagged (te); skipping or refusing a
 * body is the caller's choice (httpd refuses: 400 and close).
 * Lines end with CRLF; a bare LF, obsolete line folding, control bytes, a
 * target not starting with '/', and an HTTP/1.1 request without Host are
 * -400. Connection: close / keep-alive (a comma-separated token list,
 * any case) sets keep_alive, whose default is the version's (1.1 keeps,
 * 1.0 closes).
 */
#ifndef HTTP_PARSE_H
#define HTTP_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define HTTP_MAX_HEADERS 64

struct http_req {
  const char *method, *target; /* into the caller's bytes */
  size_t method_len, target_len;
  size_t path_len;             /* target up to '?' */
  int minor;                   /* HTTP/1.<minor>: 0 or 1 */
  bool keep_alive, te;
  uint64_t content_length;
  size_t scanned;              /* incremental: bytes searched so far */
};

static inline void http_req_init(struct http_req *r) { memset(r, 0, sizeof *r); }

/* RFC 9110 tchar. */
static inline bool http_tchar(unsigned char c) {
  return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') ||
         (c && strchr("!#$%&'*+-.^_`|~", c));
}

static inline bool http_ieq(const char *p, size_t n, const char *lit) {
  size_t k = strlen(lit);
  if (n != k) return false;
  for (size_t i = 0; i < n; i++)
    if ((p[i] | 0x20) != lit[i]) return false; /* lit is lower case letters and '-' */
  return true;
}

/* Connection: a list of tokens. */
static inline void http_connection(struct http_req *r, const char *v, size_t n) {
  size_t i = 0;
  while (i < n) {
    while (i < n && (v[i] == ',' || v[i] == ' ' || v[i] == '\t')) i++;
    size_t s = i;
    while (i < n && v[i] != ',' && v[i] != ' ' && v[i] != '\t') i++;
    if (http_ieq(v + s, i - s, "close")) r->keep_alive = false;
    else if (http_ieq(v + s, i - s, "keep-alive")) r->keep_alive = true;
  }
}

/* One header line [p, p+n) without CRLF; @seen collects Host (1) and
 * Content-Length (2). Returns 0 or -400. */
static inline int http_header(struct http_req *r, const char *p, size_t n, unsigned *seen) {
  size_t i = 0;
  while (i < n && http_tchar((unsigned char)p[i])) i++;
  if (i == 0 || i == n || p[i] != ':') return -400;
  const char *name = p;
  size_t nlen = i++;
  while (i < n && (p[i] == ' ' || p[i] == '\t')) i++;
  const char *v = p + i;
  for (; i < n; i++) {
    unsigned char c = (unsigned char)p[i];
    if ((c < 0x20 && c != '\t') || c == 0x7f) return -400;
  }
  size_t vlen = (size_t)(p + n - v);
  while (vlen && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t')) vlen--;
  if (http_ieq(name, nlen, "host")) {
    if (*seen & 1) return -400;
    *seen |= 1;
  } else if (http_ieq(name, nlen, "connection")) {
    http_connection(r, v, vlen);
  } else if (http_ieq(name, nlen, "transfer-encoding")) {
    r->te = true;
  } else if (http_ieq(name, nlen, "content-length")) {
    uint64_t cl = 0;
    if (vlen == 0 || vlen > 15) return -400;
    for (size_t k = 0; k < vlen; k++) {
      if (v[k] < '0' || v[k] > '9') return -400;
      cl = cl * 10 + (uint64_t)(v[k] - '0');
    }
    if ((*seen & 2) && cl != r->content_length) return -400;
    *seen |= 2;
    r->content_length = cl;
  }
  return 0;
}

/* The request line [p, p+n) without CRLF. Returns 0, -400 or -505. */
static inline int http_request_line(struct http_req *r, const char *p, size_t n) {
  size_t i = 0;
  while (i < n && i <= 16 && http_tchar((unsigned char)p[i])) i++;
  if (i == 0 || i > 16 || i == n || p[i] != ' ') return -400;
  r->method = p;
  r->method_len = i++;
  r->target = p + i;
  while (i < n && (unsigned char)p[i] > 0x20 && (unsigned char)p[i] < 0x7f) i++;
  r->target_len = (size_t)(p + i - r->target);
  if (r->target_len == 0 || r->target[0] != '/' || i == n || p[i] != ' ') return -400;
  const char *q = memchr(r->target, '?', r->target_len);
  r->path_len = q ? (size_t)(q - r->target) : r->target_len;
  p += i + 1;
  n -= i + 1;
  if (n != 8 || memcmp(p, "HTTP/", 5) != 0 || p[6] != '.' || p[5] < '0' || p[5] > '9' ||
      p[7] < '0' || p[7] > '9')
    return -400;
  if (p[5] != '1' || p[7] > '1') return -505;
  r->minor = p[7] - '0';
  r->keep_alive = r->minor == 1;
  return 0;
}

/* Parse the complete head [buf, buf+len), which ends with LF CR LF. */
static inline long http_parse_head(struct http_req *r, const char *buf, size_t len) {
  const char *p = buf, *end = buf + len - 2; /* the final CRLF */
  unsigned seen = 0, lines = 0;
  int rc = 0;
  while (p < end && rc == 0) {
    const char *lf = memchr(p, '\n', (size_t)(end - p));
    if (!lf || lf == p || lf[-1] != '\r') return -400; /* bare LF */
    size_t n = (size_t)(lf - 1 - p);
    if (memchr(p, '\r', n)) return -400;
    if (lines == 0) rc = http_request_line(r, p, n);
    else if (lines > HTTP_MAX_HEADERS) rc = -431;
    else if (*p == ' ' || *p == '\t') rc = -400; /* obsolete folding */
    else rc = http_header(r, p, n, &seen);
    lines++;
    p = lf + 1;
  }
  if (rc == 0 && r->minor == 1 && !(seen & 1)) rc = -400;
  return rc ? rc : (long)len;
}

/**
 * http_parse() - see the top of this file. @r: http_req_init() before the
 * first call of each request, untouched between calls. @max: the largest
 * head accepted (bytes, CRLFs included).
 */
static inline long http_parse(struct http_req *r, const char *buf, size_t len, size_t max) {
  size_t i = r->scanned;
  while (i < len) {
    const char *lf = memchr(buf + i, '\n', len - i);
    if (!lf) {
      i = len;
      break;
    }
    i = (size_t)(lf - buf);
    if (i + 1 < len && lf[1] == '\n') return -400; /* LF LF: a bare LF */
    if (i + 2 >= len) break;                       /* undecided: wait here */
    if (lf[1] == '\r' && lf[2] == '\n') {
      if (i + 3 > max) return -431;
      return http_parse_head(r, buf, i + 3);
    }
    i++;
  }
  r->scanned = i;
  return len >= max ? -431 : 0;
}

#endif
