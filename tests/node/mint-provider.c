/*
 * psi-mint: the node suite's kubelet credential-provider exec plugin (s7_minted_credentials,
 * tests/node/story/minted.rs). Built static by tests/node/provider-image.sh: the controller's
 * image has no libc and no shell.
 *
 * It does what a real plugin (ecr-credential-provider) does, with the test's mint service in
 * place of the cloud: reads the CredentialProviderRequest on stdin, POSTs it to the mint
 * service at $PSI_MINT_ADDR (IPv4:port; the controller passes it through the provider's `env`,
 * the only environment a plugin gets), and prints the service's answer, a
 * CredentialProviderResponse, on stdout. Any other answer than 200: its first line on stderr
 * and exit 1 (the test makes the service answer 500 to make the plugin fail).
 *
 * So that the test can check what the controller ran, the request also carries the plugin's
 * arguments (X-Plugin-Args) and the NAMES of its environment variables (X-Plugin-Env; never a
 * value). It never prints the credential anywhere but stdout.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define MAX_REQUEST 65536
#define MAX_RESPONSE (1 << 20)

extern char **environ;

static int fail(const char *what) {
  fprintf(stderr, "psi-mint: %s: %s\n", what, errno ? strerror(errno) : "failed");
  return 1;
}

/* Appends src to dst (capacity cap), replacing CR and LF (header injection) by spaces. */
static void append(char *dst, size_t cap, const char *src) {
  size_t n = strlen(dst);
  for (; *src && n + 1 < cap; src++) dst[n++] = (*src == '\r' || *src == '\n') ? ' ' : *src;
  dst[n] = 0;
}

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

int main(int argc, char **argv) {
  static char request[MAX_REQUEST];
  static char response[MAX_RESPONSE + 1];
  size_t len = 0;
  for (;;) {
    ssize_t r = read(0, request + len, sizeof request - len);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return fail("reading the request on stdin");
    if (r == 0) break;
    len += (size_t)r;
    if (len == sizeof request) {
      errno = 0;
      return fail("request on stdin larger than 64 KiB");
    }
  }

  const char *addr = getenv("PSI_MINT_ADDR");
  if (!addr || !*addr) {
    errno = 0;
    return fail("PSI_MINT_ADDR (IPv4:port of the mint service) is not set");
  }
  char host[64];
  const char *colon = strrchr(addr, ':');
  if (!colon || (size_t)(colon - addr) >= sizeof host) {
    errno = 0;
    return fail("PSI_MINT_ADDR is not IPv4:port");
  }
  memcpy(host, addr, (size_t)(colon - addr));
  host[colon - addr] = 0;
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(colon + 1))};
  if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
    errno = 0;
    return fail("PSI_MINT_ADDR is not IPv4:port");
  }

  char args[1024] = "";
  for (int i = 1; i < argc; i++) {
    if (i > 1) append(args, sizeof args, " ");
    append(args, sizeof args, argv[i]);
  }
  char names[1024] = "";
  for (char **e = environ; e && *e; e++) {
    char name[256];
    size_t n = strcspn(*e, "=");
    if (n >= sizeof name) n = sizeof name - 1;
    memcpy(name, *e, n);
    name[n] = 0;
    if (names[0]) append(names, sizeof names, ",");
    append(names, sizeof names, name);
  }

  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return fail("socket");
  struct timeval tv = {.tv_sec = 10};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) return fail("connecting to the mint service");

  char head[3072];
  int n = snprintf(head, sizeof head,
                   "POST /mint HTTP/1.0\r\nHost: %s\r\nContent-Type: application/json\r\n"
                   "Content-Length: %zu\r\nX-Plugin-Args: %s\r\nX-Plugin-Env: %s\r\n\r\n",
                   addr, len, args, names);
  if (n < 0 || (size_t)n >= sizeof head) {
    errno = 0;
    return fail("request header too long");
  }
  if (write_all(fd, head, (size_t)n) < 0 || write_all(fd, request, len) < 0)
    return fail("sending the request");

  size_t got = 0;
  for (;;) {
    ssize_t r = read(fd, response + got, MAX_RESPONSE - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return fail("reading the answer");
    if (r == 0) break;
    got += (size_t)r;
    if (got == MAX_RESPONSE) {
      errno = 0;
      return fail("answer larger than 1 MiB");
    }
  }
  close(fd);
  response[got] = 0;

  int status = 0;
  if (sscanf(response, "HTTP/%*s %d", &status) != 1) {
    errno = 0;
    return fail("the mint service's answer is not HTTP");
  }
  char *body = strstr(response, "\r\n\r\n");
  body = body ? body + 4 : response + got;
  if (status != 200) {
    size_t line = strcspn(body, "\r\n");
    fprintf(stderr, "psi-mint: the mint service at %s answered %d: %.*s\n", addr, status, (int)(line > 300 ? 300 : line), body);
    return 1;
  }
  if (write_all(1, body, strlen(body)) < 0) return fail("writing the response on stdout");
  return 0;
}
