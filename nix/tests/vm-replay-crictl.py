#!/usr/bin/python3
"""`crictl pull IMAGE` for the VM-test replay (nix/tests/vm-replay.py): crictl is not packaged for Debian, so
this speaks the same RPC crictl sends — runtime.v1.ImageService/PullImage over containerd's socket — to the
node's real containerd, whose CRI plugin resolves the image through its registry config_path exactly as for
crictl. Only `pull` is known; anything else is refused loudly (exit 2), never pretended.

Usage: crictl [--runtime-endpoint unix://…] [--image-endpoint unix://…] pull IMAGE
"""

import sys

import grpc


def field(number, payload):
    """A length-delimited protobuf field (wire type 2)."""
    key = bytes([(number << 3) | 2])
    n, size = len(payload), b""
    while True:
        byte = n & 0x7F
        n >>= 7
        size += bytes([byte | (0x80 if n else 0)])
        if not n:
            return key + size + payload


def strings(message):
    """The length-delimited fields of a protobuf message, as (number, bytes)."""
    out, i = [], 0
    while i < len(message):
        key = message[i]
        i += 1
        number, wire = key >> 3, key & 7
        if wire != 2:
            raise ValueError(f"unexpected wire type {wire}")
        size = shift = 0
        while True:
            b = message[i]
            i += 1
            size |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        out.append((number, message[i : i + size]))
        i += size
    return out


def main(argv):
    endpoint = "unix:///run/containerd/containerd.sock"
    args = []
    it = iter(argv)
    for a in it:
        if a in ("--runtime-endpoint", "--image-endpoint", "-r", "-i"):
            endpoint = next(it)
        elif a.startswith(("--runtime-endpoint=", "--image-endpoint=")):
            endpoint = a.split("=", 1)[1]
        else:
            args.append(a)
    if len(args) != 2 or args[0] != "pull":
        print(f"vm-replay crictl: only `crictl pull IMAGE` is replayed, not `crictl {' '.join(argv)}`", file=sys.stderr)
        return 2
    # PullImageRequest { ImageSpec image = 1 { string image = 1 } }
    request = field(1, field(1, args[1].encode()))
    channel = grpc.insecure_channel(endpoint)
    pull = channel.unary_unary("/runtime.v1.ImageService/PullImage",
                               request_serializer=lambda b: b, response_deserializer=lambda b: b)
    try:
        response = pull(request, timeout=300)
    except grpc.RpcError as e:
        print(f"crictl: pulling image failed: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    ref = dict(strings(response)).get(1, b"").decode()  # PullImageResponse { string image_ref = 1 }
    print(f"Image is up to date for {ref}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
