"""The gRPC client SDK. It imports grpcio and protobuf only: never ray, torch or the server code."""
