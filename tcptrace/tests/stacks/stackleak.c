/* stackleak: a service with a code path that leaks its connections and one
 * that closes them, for tcptrace's stack tests. Built by the test with
 *   cc -O1 -g -fno-omit-frame-pointer -fno-optimize-sibling-calls -o stackleak stackleak.c
 * Usage: stackleak PORT N_LEAKED N_CLOSED
 * Connects N_LEAKED times from checkout_reserve_items (never closes: the
 * peer closes at once, so they sit in CLOSE_WAIT) and N_CLOSED times from
 * refresh_inventory_cache (reads EOF, closes), prints "ready <pid>", then
 * waits until stdin closes (or it is killed) holding the leaked sockets.
 * open_connection() calls connect(): glibc's wrapper has no frame pointer,
 * so open_connection itself is not in the captured stack; its callers are. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_HELD 4096
static int held[MAX_HELD];
static int n_held;

__attribute__((noinline)) static int open_connection(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) { perror("socket"); exit(1); }
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) { perror("connect"); exit(1); }
    return fd;
}

/* The leak: the connection is kept "for later" and never closed. */
__attribute__((noinline)) void checkout_reserve_items(int port, int n) {
    for (int i = 0; i < n && n_held < MAX_HELD; i++)
        held[n_held++] = open_connection(port);
}

/* The healthy path: read until the peer closes, then close. */
__attribute__((noinline)) void refresh_inventory_cache(int port, int n) {
    char buf[64];
    for (int i = 0; i < n; i++) {
        int fd = open_connection(port);
        while (read(fd, buf, sizeof buf) > 0) {}
        close(fd);
    }
}

__attribute__((noinline)) void handle_order(int port, int n) { checkout_reserve_items(port, n); }
__attribute__((noinline)) void refresh_caches(int port, int n) { refresh_inventory_cache(port, n); }

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: stackleak PORT N_LEAKED N_CLOSED\n"); return 2; }
    int port = atoi(argv[1]), leaked = atoi(argv[2]), closed = atoi(argv[3]);
    handle_order(port, leaked);
    refresh_caches(port, closed);
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    char c;
    while (read(0, &c, 1) > 0) {}
    return 0;
}
