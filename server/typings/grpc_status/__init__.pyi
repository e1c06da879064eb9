from grpc_status import rpc_status as rpc_status
