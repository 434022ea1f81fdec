// Package connectv2 makes connect-go v2 (connectrpc.com/connect/v2) services
// idempotent, as the root package's [idempotency.NewInterceptor] does for
// connect-go v1: [NewServerInterceptor] guards the handler side of unary
// procedures, and [NewClientInterceptor] makes a client's mutating calls
// safe to retry. Both follow the same contract, on the same engine, options
// and record format, so v1 and v2 servers can share one store while a
// service migrates.
//
// The server interceptor answers a retry with the first answer: the same
// response message, or the same error (code, message and details), with the
// response headers and trailers the handler set in its
// [connect.CallInfo], each where the first answer had it, on the Connect
// protocol (JSON and binary), gRPC and gRPC-Web through connecthttp, and
// through connectinprocess. A v2 [*connect.Error] has no metadata of its
// own, so what v1 puts in an error's metadata travels in the call info: on
// the Connect protocol and in process as response headers, on gRPC and
// gRPC-Web as response trailers, which is where a v1 server sends an
// error's metadata. That is the library's [idempotency.StatusHeader] and
// Retry-After on its own errors, and the replay marker on a replayed error;
// a replayed response carries the marker as a response header.
//
// This package imports connect-go v2; the root package does not, so a v1
// user's build never compiles v2.
package connectv2
