/* earlyaccept MODE N: a server whose accepted sockets were closed by their
 * peers before accept() returned (health checks, a full backlog), for the
 * `--stacks` test that such sockets still name the accepting code, not the
 * listen() path. Listens on 127.0.0.1 (an ephemeral port) and prints
 * "ready PID PORT"; MODE "same": the listening thread accepts; MODE "fork":
 * a forked child accepts (a pre-fork server) and prints "acceptor PID".
 * On a stdin line "go" the acceptor accepts N connections in
 * serve_health_checks() and keeps them (so they stay in CLOSE_WAIT), prints
 * "accepted", and waits for stdin to close. Built with frame pointers. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static int held[1024];

__attribute__((noinline)) static int take_one(int lfd) {
    int fd = accept(lfd, 0, 0);
    if (fd < 0) {
        perror("accept");
        exit(1);
    }
    return fd;
}

__attribute__((noinline)) void serve_health_checks(int lfd, int n) {
    for (int i = 0; i < n && i < 1024; i++)
        held[i] = take_one(lfd);
}

__attribute__((noinline)) static int open_listener(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, 128)) {
        perror("listen");
        exit(1);
    }
    return fd;
}

__attribute__((noinline)) int start_server_socket(void) { return open_listener(); }

static void wait_for_go(void) {
    char line[16];
    if (!fgets(line, sizeof line, stdin))
        exit(1);
}

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    int forked = !strcmp(argv[1], "fork");
    int n = atoi(argv[2]);
    int lfd = start_server_socket();
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    getsockname(lfd, (struct sockaddr *)&a, &len);
    printf("ready %d %d\n", (int)getpid(), ntohs(a.sin_port));
    fflush(stdout);
    if (forked) {
        pid_t child = fork();
        if (child < 0)
            return 1;
        if (child > 0) {
            /* The parent only waits: stdin is the child's. */
            int status;
            waitpid(child, &status, 0);
            return 0;
        }
        printf("acceptor %d\n", (int)getpid());
        fflush(stdout);
    }
    wait_for_go();
    serve_health_checks(lfd, n);
    printf("accepted\n");
    fflush(stdout);
    char c;
    while (read(0, &c, 1) > 0) {
    }
    return 0;
}
