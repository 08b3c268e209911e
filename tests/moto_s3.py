"""moto's S3 server (`python -m moto.server`'s arguments) with its conditional writes atomic, as S3's are.

moto checks a PUT's or DELETE's If-Match / If-None-Match and then writes, with nothing held between the two
(moto 5.2, s3/responses.py), and its server answers requests on concurrent threads: two drivers taking over
the same lease at once could both pass the check (seen: test_lock's race, once in a full run), where S3 lets
only the first to finish succeed. Here every PUT and DELETE of an object is one step under one lock (the
request's body is read before it); the rest runs as moto runs it.
"""

import threading

from moto import server
from moto.s3.responses import S3Response

_one_at_a_time = threading.Lock()


def _atomic(write):
    def atomic_write(self):
        with _one_at_a_time:
            return write(self)
    return atomic_write


S3Response.put_object = _atomic(S3Response.put_object)
S3Response.delete_object = _atomic(S3Response.delete_object)

if __name__ == "__main__":
    server.main()
