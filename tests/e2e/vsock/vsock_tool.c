/* vsock_tool: moves bytes over AF_VSOCK for pocketvm's end-to-end tests.
 *
 *   vsock_tool echo PORT [N]      accept a connection on PORT, send every byte back
 *                                 until the peer ends its side, then print
 *                                 "ECHOED <bytes> <sum1> <sum2>"; with N, serve
 *                                 N connections one after the other, then print
 *                                 "ECHOED <N> CONNECTIONS"
 *   vsock_tool send CID PORT N    connect to CID:PORT, send N bytes of the
 *                                 pattern below (then end its side) while
 *                                 reading what the peer sends back until it
 *                                 closes, and print
 *                                 "SENT <n> GOT <bytes> <sum1> <sum2>"
 *
 * The checksum is over 64-bit little-endian words w[i] (the data is a
 * multiple of 8 bytes): sum1 = sum of w[i], sum2 = sum of (i+1)*w[i], both
 * mod 2^64, so the host can compute it with numpy. The pattern's word i is
 * i * 0x9E3779B97F4A7C15 ^ (i >> 7).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#define BUF (256 * 1024)
static unsigned char buf[BUF];

struct sum { uint64_t n, s1, s2, word_index; };

static void add(struct sum *s, const unsigned char *p, size_t len)
{
    /* Only whole words are summed; callers move multiples of 8 in total, and
     * a partial word is carried to the next call. */
    static unsigned char carry[8];
    static size_t have;
    size_t i = 0;
    s->n += len;
    while (i < len) {
        if (have || len - i < 8) {
            while (have < 8 && i < len) carry[have++] = p[i++];
            if (have < 8) break;
            uint64_t w; memcpy(&w, carry, 8); have = 0;
            s->word_index++; s->s1 += w; s->s2 += s->word_index * w;
            continue;
        }
        uint64_t w; memcpy(&w, p + i, 8); i += 8;
        s->word_index++; s->s1 += w; s->s2 += s->word_index * w;
    }
}

static int write_all(int fd, const unsigned char *p, size_t len)
{
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0) { if (errno == EINTR) continue; return -1; }
        p += n; len -= (size_t)n;
    }
    return 0;
}

static int echo(unsigned port, unsigned long connections)
{
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_port = port, .svm_cid = VMADDR_CID_ANY };
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 16)) { perror("listen"); return 1; }
    printf("LISTENING %u\n", port); fflush(stdout);
    for (unsigned long k = 0; k < connections; k++) {
        int c = accept(s, NULL, NULL);
        if (c < 0) { perror("accept"); return 1; }
        struct sum sum = {0};
        for (;;) {
            ssize_t n = read(c, buf, BUF);
            if (n < 0) { if (errno == EINTR) continue; perror("read"); return 1; }
            if (n == 0) break;
            add(&sum, buf, (size_t)n);
            if (write_all(c, buf, (size_t)n)) { perror("write"); return 1; }
        }
        close(c);
        if (connections == 1)
            printf("ECHOED %llu %llu %llu\n", (unsigned long long)sum.n, (unsigned long long)sum.s1,
                   (unsigned long long)sum.s2);
    }
    if (connections > 1) printf("ECHOED %lu CONNECTIONS\n", connections);
    return 0;
}

static int send_pattern(unsigned cid, unsigned port, uint64_t total)
{
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_port = port, .svm_cid = cid };
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a)) { perror("connect"); printf("CONNECT-FAILED\n"); return 1; }
    /* Read while writing: a peer that echoes would otherwise block us both. */
    static unsigned char out[BUF];
    size_t out_len = 0, out_pos = 0;
    uint64_t i = 0, sent = 0;
    int writing = 1;
    struct sum sum = {0};
    for (;;) {
        if (writing && out_pos == out_len) {
            if (sent == total) { shutdown(s, SHUT_WR); writing = 0; }
            else {
                out_len = total - sent < BUF ? (size_t)(total - sent) : BUF;
                for (size_t k = 0; k < out_len; k += 8, i++) {
                    uint64_t w = i * 0x9E3779B97F4A7C15ULL ^ (i >> 7);
                    memcpy(out + k, &w, 8);
                }
                out_pos = 0;
            }
        }
        struct pollfd p = { .fd = s, .events = POLLIN | (writing ? POLLOUT : 0) };
        if (poll(&p, 1, -1) < 0) { if (errno == EINTR) continue; perror("poll"); return 1; }
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = read(s, buf, BUF);
            if (n < 0 && errno != EINTR && errno != EAGAIN) { perror("read"); return 1; }
            if (n == 0) break;
            if (n > 0) add(&sum, buf, (size_t)n);
        }
        if (writing && (p.revents & POLLOUT)) {
            ssize_t n = send(s, out + out_pos, out_len - out_pos, MSG_DONTWAIT);
            if (n < 0 && errno != EINTR && errno != EAGAIN) { perror("write"); return 1; }
            if (n > 0) { out_pos += (size_t)n; sent += (uint64_t)n; }
        }
    }
    close(s);
    printf("SENT %llu GOT %llu %llu %llu\n", (unsigned long long)sent, (unsigned long long)sum.n,
           (unsigned long long)sum.s1, (unsigned long long)sum.s2);
    return 0;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN); /* a peer that goes away is an error message, not a silent death */
    if ((argc == 3 || argc == 4) && !strcmp(argv[1], "echo"))
        return echo((unsigned)strtoul(argv[2], NULL, 10), argc == 4 ? strtoul(argv[3], NULL, 10) : 1);
    if (argc == 5 && !strcmp(argv[1], "send"))
        return send_pattern((unsigned)strtoul(argv[2], NULL, 10), (unsigned)strtoul(argv[3], NULL, 10),
                            strtoull(argv[4], NULL, 10));
    fprintf(stderr, "usage: vsock_tool echo PORT [N] | send CID PORT BYTES\n");
    return 2;
}
