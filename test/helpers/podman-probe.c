/*
 * The whole userland of the podman test's image (test/priv/podman-cni.test.ts): one static
 * program, so the image needs no registry and no base image in podman's storage.
 *   probe sleep          prints its IPv4 addresses ("addr <if> <ip>"), then waits for SIGTERM
 *   probe tcp IP PORT    prints its addresses, connects (5 s bound), prints "reply <first line>"
 */
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static void addrs(void) {
  struct ifaddrs *list, *a;
  if (getifaddrs(&list) != 0) {
    perror("getifaddrs");
    exit(2);
  }
  for (a = list; a; a = a->ifa_next) {
    if (!a->ifa_addr || a->ifa_addr->sa_family != AF_INET) continue;
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &((struct sockaddr_in *)a->ifa_addr)->sin_addr, ip, sizeof ip);
    printf("addr %s %s\n", a->ifa_name, ip);
  }
  freeifaddrs(list);
  fflush(stdout);
}

static void bye(int sig) {
  (void)sig;
  _exit(0);
}

int main(int argc, char **argv) {
  addrs();
  if (argc == 2 && strcmp(argv[1], "sleep") == 0) {
    signal(SIGTERM, bye);
    signal(SIGINT, bye);
    for (;;) pause();
  }
  if (argc == 4 && strcmp(argv[1], "tcp") == 0) {
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[3]))};
    if (inet_pton(AF_INET, argv[2], &to.sin_addr) != 1) return 2;
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(s, (struct sockaddr *)&to, sizeof to) != 0) {
      perror("connect");
      return 1;
    }
    char buf[256];
    ssize_t n = read(s, buf, sizeof buf - 1);
    if (n <= 0) {
      perror("read");
      return 1;
    }
    buf[n] = 0;
    buf[strcspn(buf, "\n")] = 0;
    printf("reply %s\n", buf);
    return 0;
  }
  fprintf(stderr, "usage: probe sleep | probe tcp IP PORT\n");
  return 2;
}
