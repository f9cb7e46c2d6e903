// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Bounded UDP flood for bench/drop_cost.py: sends exactly --count datagrams
 * (or fewer if --max-seconds runs out first) with sendmmsg() from one
 * unconnected socket, and prints one JSON line:
 *   {"sent": N, "errors": N, "elapsed_ns": N, "cpu_ns": N}
 * cpu_ns is this thread's CPU time (CLOCK_THREAD_CPUTIME_ID). Run it inside
 * the sender namespace (ip netns exec). Unconnected on purpose: ICMP port
 * unreachable errors from a closed port are not reported to it.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCH 1024

static long long now_ns(clockid_t c)
{
	struct timespec ts;

	clock_gettime(c, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void usage(void)
{
	fprintf(stderr, "usage: flood --src ADDR --dst ADDR --port N --count N "
		"[--max-seconds S] [--batch N] [--payload BYTES] [--sport N]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *src = NULL, *dst = NULL;
	long port = 0, count = 0, batch = 256, payload = 18, sport = 40000;
	double max_s = 60;

	for (int i = 1; i < argc; i++) {
		if (i + 1 >= argc)
			usage();
		const char *k = argv[i], *v = argv[++i];

		if (!strcmp(k, "--src")) src = v;
		else if (!strcmp(k, "--dst")) dst = v;
		else if (!strcmp(k, "--port")) port = atol(v);
		else if (!strcmp(k, "--count")) count = atol(v);
		else if (!strcmp(k, "--max-seconds")) max_s = atof(v);
		else if (!strcmp(k, "--batch")) batch = atol(v);
		else if (!strcmp(k, "--payload")) payload = atol(v);
		else if (!strcmp(k, "--sport")) sport = atol(v);
		else usage();
	}
	if (!src || !dst || port <= 0 || port > 65535 || count <= 0 || batch <= 0 ||
	    batch > MAX_BATCH || payload < 0 || payload > 1400 || sport < 0 || sport > 65535)
		usage();

	struct sockaddr_storage ss = {0}, ds = {0};
	socklen_t slen;
	int family = strchr(dst, ':') ? AF_INET6 : AF_INET;

	if (family == AF_INET) {
		struct sockaddr_in *s4 = (void *)&ss, *d4 = (void *)&ds;

		s4->sin_family = d4->sin_family = AF_INET;
		s4->sin_port = htons(sport);
		d4->sin_port = htons(port);
		if (inet_pton(AF_INET, src, &s4->sin_addr) != 1 || inet_pton(AF_INET, dst, &d4->sin_addr) != 1)
			usage();
		slen = sizeof(*s4);
	} else {
		struct sockaddr_in6 *s6 = (void *)&ss, *d6 = (void *)&ds;

		s6->sin6_family = d6->sin6_family = AF_INET6;
		s6->sin6_port = htons(sport);
		d6->sin6_port = htons(port);
		if (inet_pton(AF_INET6, src, &s6->sin6_addr) != 1 || inet_pton(AF_INET6, dst, &d6->sin6_addr) != 1)
			usage();
		slen = sizeof(*s6);
	}
	int fd = socket(family, SOCK_DGRAM, 0);
	int one = 1, sndbuf = 4 << 20;

	if (fd < 0) {
		perror("socket");
		return 1;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
	if (bind(fd, (struct sockaddr *)&ss, slen)) {
		perror("bind");
		return 1;
	}

	static char buf[1500];
	static struct iovec iov[MAX_BATCH];
	static struct mmsghdr msgs[MAX_BATCH];

	memset(buf, 'x', sizeof(buf));
	for (int i = 0; i < batch; i++) {
		iov[i].iov_base = buf;
		iov[i].iov_len = payload;
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
		msgs[i].msg_hdr.msg_name = &ds;
		msgs[i].msg_hdr.msg_namelen = slen;
	}

	long sent = 0, errors = 0, loops = 0;
	long long t0 = now_ns(CLOCK_MONOTONIC), c0 = now_ns(CLOCK_THREAD_CPUTIME_ID);
	long long deadline = t0 + (long long)(max_s * 1e9);

	while (sent < count) {
		long want = count - sent < batch ? count - sent : batch;
		int n = sendmmsg(fd, msgs, (unsigned int)want, 0);

		if (n < 0) {
			if (errno != ENOBUFS && errno != EAGAIN && errno != EINTR && errno != ECONNREFUSED) {
				perror("sendmmsg");
				return 1;
			}
			errors++;
		} else {
			sent += n;
		}
		if ((++loops & 63) == 0 && now_ns(CLOCK_MONOTONIC) > deadline)
			break;
	}
	long long t1 = now_ns(CLOCK_MONOTONIC), c1 = now_ns(CLOCK_THREAD_CPUTIME_ID);

	printf("{\"sent\": %ld, \"errors\": %ld, \"elapsed_ns\": %lld, \"cpu_ns\": %lld}\n",
	       sent, errors, t1 - t0, c1 - c0);
	close(fd);
	return 0;
}
