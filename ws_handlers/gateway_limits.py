"""API Gateway's WebSocket size limits, in bytes: the facts the service and its emulation design around.

A module of its own, importing nothing, because `tickets` (which the experiment server
imports to mint) and `protocol` both need them, and so do the local gateway's emulators.
"""

#: API Gateway closes the socket (1009) on a client frame larger than this. Browsers send
#: each message as a single frame, so in practice it bounds every client message.
MAX_CLIENT_FRAME_BYTES = 32 * 1024
#: A message: one post_to_connection payload (larger ones are refused, 413), or a client
#: message assembled from several frames (larger ones close the socket, 1009).
MAX_MESSAGE_BYTES = 128 * 1024
