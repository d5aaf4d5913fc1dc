"""bound_unread_sends: TCP_USER_TIMEOUT on the process's listening TCP sockets and the
connections they accepted before it was set, not on the others."""

from __future__ import annotations

import socket

from gateway.listener import bound_unread_sends


def test_the_listening_sockets_get_the_deadline_and_the_others_do_not() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    before = socket.socket()  # neither listening nor connected
    try:
        assert bound_unread_sends(2.5) >= 1
        option = socket.TCP_USER_TIMEOUT
        assert listener.getsockopt(socket.IPPROTO_TCP, option) == 2500
        # accepted before the listener had it (a worker's first ~50 ms): it does not inherit it
        # (before, it kept 0: the deaf client of a worker's first answers was never cut off)
        assert accepted.getsockopt(socket.IPPROTO_TCP, option) == 2500
        for other in (client, before):  # an outgoing connection, and neither
            assert other.getsockopt(socket.IPPROTO_TCP, option) == 0
        later = socket.create_connection(listener.getsockname())
        inherited, _ = listener.accept()
        with later, inherited:  # what the kernel's abort relies on: an accepted socket inherits
            assert inherited.getsockopt(socket.IPPROTO_TCP, option) == 2500
    finally:
        for sock in (listener, client, accepted, before):
            sock.close()


def test_no_descriptors_to_look_at_is_nothing_set() -> None:
    assert bound_unread_sends(1.0, fds="/nonexistent/fd") == 0
