"""Generated gRPC/protobuf modules of the nbo.v1 wire contract (scripts/gen_proto.py; the .proto files are the source)."""
