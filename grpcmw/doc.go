// Package grpcmw makes the unary methods of grpc-go servers idempotent, and
// grpc-go clients retry-safe, on the engine and the record format of package
// idempotency: a server guarded by [UnaryServerInterceptor] and a Connect
// server guarded by [idempotency.NewInterceptor] that share a store replay
// each other's records.
//
// On the server, the first call with a key (the incoming metadata
// idempotency-key, or grpcgateway-idempotency-key as grpc-gateway forwards
// it) runs the handler; every retry with that key gets the stored response
// message, or the stored status, back with the headers and trailers the
// handler set and the header idempotent-replayed: true, without running the
// handler again. The library's own refusals (in flight, payload mismatch,
// invalid key, store unavailable) are statuses with the header metadata
// idempotency-status, and retry-after for a call in flight.
//
// On the client, [UnaryClientInterceptor] sets a key on every guarded call,
// keeps it for every retry of the call, and retries what the server's
// library refused for the moment and what the transport lost.
//
// Behind grpc-gateway, [GatewayIncomingHeaderMatcher] forwards the
// Idempotency-Key header to the server, and [GatewayOutgoingHeaderMatcher]
// hands the replay marker and the library's headers back to the REST client
// under their HTTP names.
//
// Streaming methods are not guarded: they pass through.
package grpcmw
