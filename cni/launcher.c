/*
 * flannelish-cni native launcher: the daemon fast path without starting Python.
 *
 * `flannelish install-cni` compiles this (when a C compiler is available) with
 * three paths baked in, and installs it as <bin-dir>/flannelish-cni:
 *
 *   FL_SOCKET    the daemon socket of this node (<dir of subnet file>/flannelish.sock)
 *   FL_PYTHON    the venv's python
 *   FL_SCRIPT    the Python launcher, which does everything else
 *
 * Why: CPython needs ~8 ms just to start, about as long as the reference Go
 * plugins take for a whole ADD; this shim starts in well under 1 ms.
 *
 * It does exactly one thing: for ADD/DEL/CHECK/GC/STATUS it sends env + stdin
 * to FL_SOCKET in the wire format of client.py and prints the reply.  It does
 * not parse the netconf: the server compares the netconf's socket path
 * (daemonSocket, else <dir of subnetFile>/flannelish.sock) with its own and
 * answers DECLINE when the request is not for it.  In every case it cannot
 * handle -- other commands, no daemon, a decline, any local failure before the
 * request was sent -- it execs the Python launcher with the same stdin, so
 * behaviour never differs from the Python entry point.  After the request was
 * sent, a broken connection is reported as CNI error 11 (never redone).
 *
 * Before sending the environment it checks who listens on FL_SOCKET
 * (SO_PEERCRED: the uid that called listen()): only root or our own uid is
 * trusted.  Anyone else gets nothing, and the Python launcher takes over
 * (which checks again, says so on stderr and works in-process).  Netconfs
 * larger than FL_MAX_STDIN are handed to Python as well, which refuses them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef FL_SOCKET
#error "FL_SOCKET must be defined"
#endif

/* client.MAX_STDIN_BYTES: Python refuses more, so never forward more. */
#define FL_MAX_STDIN (8u * 1024u * 1024u)

extern char **environ;

struct buf {
    char *data;
    size_t len, cap;
};

static int buf_add(struct buf *b, const void *data, size_t len) {
    if (len == 0)
        return 0;
    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap : 8192;
        while (cap < b->len + len)
            cap *= 2;
        char *grown = realloc(b->data, cap);
        if (!grown)
            return -1;
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    return 0;
}

/* Read to EOF, or until more than `limit` bytes are in `b` (0: no limit). */
static int read_all(int fd, struct buf *b, size_t limit) {
    char chunk[65536];
    for (;;) {
        if (limit && b->len > limit)
            return 0;
        ssize_t n = read(fd, chunk, sizeof chunk);
        if (n == 0)
            return 0;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (buf_add(b, chunk, (size_t)n) < 0)
            return -1;
    }
}

static int write_all(int fd, const char *data, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Run the Python launcher; `input` (if any) becomes its stdin again. */
static void fallback(const struct buf *input) {
    if (input) {
        int fd = memfd_create("flannelish-cni-stdin", 0);
        if (fd < 0 || write_all(fd, input->data, input->len) < 0 || lseek(fd, 0, SEEK_SET) < 0 ||
            dup2(fd, 0) < 0) {
            const char *msg = "{\"cniVersion\": \"1.1.0\", \"code\": 5, "
                              "\"msg\": \"flannelish-cni launcher: cannot pass stdin on\"}";
            write_all(1, msg, strlen(msg));
            exit(1);
        }
        if (fd != 0)
            close(fd);
    }
    char *args[] = {FL_PYTHON, "-IS", FL_SCRIPT, NULL};
    execv(FL_PYTHON, args);
    const char *msg = "{\"cniVersion\": \"1.1.0\", \"code\": 999, "
                      "\"msg\": \"flannelish-cni launcher: cannot start " FL_PYTHON "\"}";
    write_all(1, msg, strlen(msg));
    exit(1);
}

static int malformed(void) {
    const char *msg = "{\n    \"cniVersion\": \"1.1.0\",\n    \"code\": 999,\n    \"msg\": "
                      "\"malformed reply from the daemon at " FL_SOCKET "\"\n}";
    write_all(1, msg, strlen(msg));
    return 1;
}

static int forwarded(const char *command) {
    static const char *const commands[] = {"ADD", "DEL", "CHECK", "GC", "STATUS", NULL};
    for (int i = 0; command && commands[i]; i++)
        if (strcmp(command, commands[i]) == 0)
            return 1;
    return 0;
}

int main(void) {
    if (!forwarded(getenv("CNI_COMMAND")))
        fallback(NULL); /* VERSION and every error case: the Python entry point answers */

    /* A daemon that goes away mid-request must give error 11, not death by SIGPIPE. */
    signal(SIGPIPE, SIG_IGN);
    struct buf input = {0}, request = {0}, env = {0}, reply = {0};
    if (read_all(0, &input, FL_MAX_STDIN) < 0 || input.len > FL_MAX_STDIN)
        fallback(&input);
    for (char **e = environ; *e; e++) {
        if (env.len && buf_add(&env, "", 1) < 0) /* NUL separator */
            fallback(&input);
        if (buf_add(&env, *e, strlen(*e)) < 0)
            fallback(&input);
    }
    char header[64];
    int n = snprintf(header, sizeof header, "FLCNI2\n%zu\n", env.len);
    if (buf_add(&request, header, (size_t)n) < 0 || buf_add(&request, env.data, env.len) < 0 ||
        buf_add(&request, input.data, input.len) < 0)
        fallback(&input);

    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(FL_SOCKET) >= sizeof addr.sun_path)
        fallback(&input);
    strcpy(addr.sun_path, FL_SOCKET);
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0 || connect(sock, (struct sockaddr *)&addr, sizeof addr) < 0)
        fallback(&input); /* no daemon: work in-process */
    struct ucred peer;
    socklen_t peer_len = sizeof peer;
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &peer, &peer_len) < 0 ||
        peer_len != sizeof peer || (peer.uid != 0 && peer.uid != geteuid())) {
        close(sock);
        fallback(&input); /* not our daemon: send it nothing */
    }
    if (write_all(sock, request.data, request.len) < 0 || shutdown(sock, SHUT_WR) < 0 ||
        read_all(sock, &reply, 0) < 0 || reply.len == 0) {
        const char *msg = "{\n    \"cniVersion\": \"1.1.0\",\n    \"code\": 11,\n    \"msg\": "
                          "\"lost the connection to the daemon at " FL_SOCKET "\"\n}";
        write_all(1, msg, strlen(msg));
        return 1;
    }
    if (reply.len >= 8 && memcmp(reply.data, "DECLINE\n", 8) == 0)
        fallback(&input); /* not this daemon's network: the Python launcher routes it */

    /* reply: <exit>\n<len(stdout)>\n<stdout><stderr> */
    if (buf_add(&reply, "", 1) < 0)
        return malformed();
    char *end = NULL;
    long code = strtol(reply.data, &end, 10);
    if (!end || end == reply.data || *end != '\n')
        return malformed();
    char *size_end = NULL;
    unsigned long out_len = strtoul(end + 1, &size_end, 10);
    if (!size_end || size_end == end + 1 || *size_end != '\n')
        return malformed();
    char *out = size_end + 1;
    size_t rest = reply.len - 1 - (size_t)(out - reply.data);
    if (out_len > rest)
        return malformed();
    write_all(2, out + out_len, rest - out_len);
    write_all(1, out, out_len);
    return (int)code;
}
