#!/usr/bin/env python3
"""A user-space WAN for ssh: relays stdin/stdout <-> a TCP connection, holding every chunk for
DELAY ms in each direction (so the round trip gains 2 x DELAY), with no bandwidth limit.
netem is unavailable in this kernel (see FACTS.md), hence this.

    ssh -o ProxyCommand='python3 delay_relay.py %h %p' …      (DELAY_MS=10 by default)

Each direction is a reader thread stamping chunks with their release time and a writer thread
releasing them in order, so throughput is not limited by the delay (a chunk read at t goes out
at t + DELAY no matter how many are queued before it).

    delay_relay.py --rtt HOST PORT   measures the round trip through the relay to an echo
                                     server it starts itself (a self-check; HOST/PORT ignored).
"""

import os
import queue
import socket
import sys
import threading
import time

DELAY = float(os.environ.get("DELAY_MS", "10")) / 1000.0
READ = 256 * 1024


def pump(read, write, close_write):
    q = queue.Queue()

    def reader():
        try:
            while True:
                data = read(READ)
                q.put((time.monotonic() + DELAY, data))
                if not data:
                    return
        except OSError:
            q.put((time.monotonic() + DELAY, b""))

    def writer():
        try:
            while True:
                due, data = q.get()
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if not data:
                    break
                # Send what else is already due with it (fewer syscalls, same timing).
                while True:
                    try:
                        due2, more = q.queue[0]
                    except IndexError:
                        break
                    if not more or due2 > time.monotonic() or len(data) > 4 * READ:
                        break
                    q.get_nowait()
                    data += more
                view = memoryview(data)
                while view:
                    n = write(view)
                    view = view[n:]
        except OSError:
            pass
        finally:
            close_write()

    threads = [threading.Thread(target=reader, daemon=True), threading.Thread(target=writer)]
    for t in threads:
        t.start()
    return threads


def relay(host, port, fd_in=0, fd_out=1):
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def shut_sock():
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close_out():
        try:
            os.close(fd_out)
        except OSError:
            pass

    up = pump(lambda n: os.read(fd_in, n), sock.send, shut_sock)
    down = pump(sock.recv, lambda b: os.write(fd_out, b), close_out)
    # Done when the server side is finished (ssh closes stdin only at the very end).
    down[1].join()
    os._exit(0)


def measure_rtt():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]

    def echo():
        c, _ = srv.accept()
        while True:
            d = c.recv(65536)
            if not d:
                return
            c.sendall(d)

    threading.Thread(target=echo, daemon=True).start()
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    threading.Thread(target=relay, args=("127.0.0.1", port, r_in, w_out), daemon=True).start()
    rtts = []
    for _ in range(10):
        t = time.monotonic()
        os.write(w_in, b"x")
        os.read(r_out, 1)
        rtts.append(time.monotonic() - t)
    rtts.sort()
    print(f"{rtts[len(rtts) // 2] * 1000:.1f}")


if __name__ == "__main__":
    if sys.argv[1] == "--rtt":
        measure_rtt()
    else:
        relay(sys.argv[1], sys.argv[2])
