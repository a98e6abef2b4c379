/*
 * handshake_limit: the practical lower bound of client CPU per TLS endpoint.
 *
 * A minimal non-blocking OpenSSL client on epoll.  For each of N endpoints it
 * makes two handshakes, one with SNI = the endpoint's name and one without SNI,
 * each on a fresh TCP connection with no session reuse, keeping --inflight
 * handshakes in flight.  No certificate verification, no parsing beyond what
 * OpenSSL does inside the handshake: whatever a real prober does costs more,
 * so this is the floor the exporter is compared with.
 *
 * It prints one JSON object on stdout: counts, wall time and the process CPU
 * (getrusage, taken around the handshake loop only).
 *
 *   handshake_limit --address 127.0.0.1 --ports 20001,20002 \
 *       --names 'h%05d.bench.test' --count 2000 [--inflight 50] [--timeout 5] [--rate R]
 *
 * With --rate R (handshakes per second) handshake j starts no earlier than j/R
 * seconds after the start: the work spread evenly in time, as a scheduler
 * probing N endpoints per interval spreads it, instead of one burst.
 *
 * Endpoint i uses name sprintf(names, i) and port ports[i % nports].
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_PORTS 64
#define MAX_INFLIGHT 4096

struct slot {
    int fd;
    SSL *ssl;
    int job; /* -1 when free */
    double deadline;
};

static struct {
    const char *address;
    int ports[MAX_PORTS];
    int nports;
    const char *names;
    int count;
    int inflight;
    double timeout;
    double rate; /* 0: as fast as possible */
} opt = {"127.0.0.1", {0}, 0, "h%05d.bench.test", 0, 50, 5.0, 0.0};

static SSL_CTX *ctx;
static int epfd;
static struct slot slots[MAX_INFLIGHT];
static int next_job, jobs_total, done, ok, failed, timed_out;

static double now_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double rusage_seconds(struct rusage *ru, int sys) {
    struct timeval *tv = sys ? &ru->ru_stime : &ru->ru_utime;
    return (double)tv->tv_sec + (double)tv->tv_usec / 1e6;
}

static void usage(void) {
    fprintf(stderr,
            "usage: handshake_limit --ports P1[,P2...] --count N [--address IP] "
            "[--names FMT] [--inflight K] [--timeout S] [--rate R]\n");
    exit(2);
}

static void parse_args(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc) usage();
        const char *k = argv[i], *v = argv[++i];
        if (!strcmp(k, "--address")) {
            opt.address = v;
        } else if (!strcmp(k, "--ports")) {
            char *copy = strdup(v), *save = NULL;
            for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
                if (opt.nports == MAX_PORTS) usage();
                opt.ports[opt.nports++] = atoi(tok);
            }
            free(copy);
        } else if (!strcmp(k, "--names")) {
            opt.names = v;
        } else if (!strcmp(k, "--count")) {
            opt.count = atoi(v);
        } else if (!strcmp(k, "--inflight")) {
            opt.inflight = atoi(v);
        } else if (!strcmp(k, "--timeout")) {
            opt.timeout = atof(v);
        } else if (!strcmp(k, "--rate")) {
            opt.rate = atof(v);
        } else {
            usage();
        }
    }
    if (opt.nports == 0 || opt.count <= 0 || opt.inflight <= 0 || opt.inflight > MAX_INFLIGHT)
        usage();
}

static void finish(struct slot *s, int success) {
    if (s->ssl) SSL_free(s->ssl); /* frees nothing of the fd: it was set with SSL_set_fd */
    if (s->fd >= 0) close(s->fd);  /* close also removes it from the epoll set */
    s->ssl = NULL;
    s->fd = -1;
    s->job = -1;
    done++;
    if (success)
        ok++;
    else
        failed++;
}

static void watch(struct slot *s, unsigned events, int op) {
    struct epoll_event ev = {.events = events, .data.ptr = s};
    if (epoll_ctl(epfd, op, s->fd, &ev) < 0) {
        perror("epoll_ctl");
        exit(1);
    }
}

/* Start job j in slot s: non-blocking connect; the handshake starts once writable. */
static void start(struct slot *s, int j) {
    int endpoint = j / 2;
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((unsigned short)opt.ports[endpoint % opt.nports])};
    inet_pton(AF_INET, opt.address, &sa.sin_addr);
    s->job = j;
    s->ssl = NULL;
    s->deadline = now_mono() + opt.timeout;
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0) {
        perror("socket");
        exit(1);
    }
    int one = 1;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(s->fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) {
        finish(s, 0);
        return;
    }
    watch(s, EPOLLOUT, EPOLL_CTL_ADD);
}

static void step(struct slot *s) {
    if (!s->ssl) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err != 0) {
            finish(s, 0);
            return;
        }
        s->ssl = SSL_new(ctx);
        SSL_set_fd(s->ssl, s->fd);
        SSL_set_connect_state(s->ssl);
        if (s->job % 2 == 0) { /* even jobs send SNI, odd ones none */
            char name[256];
            snprintf(name, sizeof name, opt.names, s->job / 2);
            SSL_set_tlsext_host_name(s->ssl, name);
        }
    }
    int r = SSL_do_handshake(s->ssl);
    if (r == 1) {
        finish(s, 1);
        return;
    }
    switch (SSL_get_error(s->ssl, r)) {
        case SSL_ERROR_WANT_READ:
            watch(s, EPOLLIN, EPOLL_CTL_MOD);
            break;
        case SSL_ERROR_WANT_WRITE:
            watch(s, EPOLLOUT, EPOLL_CTL_MOD);
            break;
        default:
            ERR_clear_error();
            finish(s, 0);
    }
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        ERR_print_errors_fp(stderr);
        return 1;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    /* Every handshake is a full one: no client session cache, no tickets. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    jobs_total = 2 * opt.count;
    int k = opt.inflight < jobs_total ? opt.inflight : jobs_total;
    for (int i = 0; i < MAX_INFLIGHT; i++) slots[i].job = -1, slots[i].fd = -1;

    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    double t0 = now_mono(), next_sweep = t0 + 0.1;
    struct epoll_event events[MAX_INFLIGHT];
    while (done < jobs_total) {
        /* Start what is due in the free slots; with --rate, wake up for the next release. */
        int wait_ms = 100;
        for (int i = 0; i < k && next_job < jobs_total; i++) {
            if (slots[i].job >= 0) continue;
            if (opt.rate > 0) {
                double due = t0 + next_job / opt.rate - now_mono();
                if (due > 0) {
                    int ms = (int)(due * 1000) + 1;
                    wait_ms = ms < wait_ms ? ms : wait_ms;
                    break;
                }
            }
            start(&slots[i], next_job++);
        }
        int n = epoll_wait(epfd, events, k, wait_ms);
        if (n < 0 && errno != EINTR) {
            perror("epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) step((struct slot *)events[i].data.ptr);
        double t = now_mono();
        if (t >= next_sweep) { /* timeouts are rare here: a coarse sweep is enough */
            next_sweep = t + 0.1;
            for (int i = 0; i < k; i++)
                if (slots[i].job >= 0 && t > slots[i].deadline) {
                    timed_out++;
                    finish(&slots[i], 0);
                }
        }
    }
    double wall = now_mono() - t0;
    getrusage(RUSAGE_SELF, &ru1);
    double user = rusage_seconds(&ru1, 0) - rusage_seconds(&ru0, 0);
    double sys = rusage_seconds(&ru1, 1) - rusage_seconds(&ru0, 1);
    printf("{\"endpoints\": %d, \"handshakes\": %d, \"ok\": %d, \"failed\": %d, "
           "\"timed_out\": %d, \"inflight\": %d, \"wall_seconds\": %.6f, "
           "\"cpu_user_seconds\": %.6f, \"cpu_system_seconds\": %.6f}\n",
           opt.count, jobs_total, ok, failed, timed_out, k, wall, user, sys);
    SSL_CTX_free(ctx);
    return failed ? 1 : 0;
}
