// Package idempotency makes mutating endpoints idempotent: a client sends
// an Idempotency-Key header; the first request with a key runs its handler,
// and every retry with the same key gets the stored response back, marked
// with an Idempotent-Replayed header, without running the handler again.
//
// The package holds the [Engine], the [Store] interface that stores
// implement and their optional capabilities, the options, the errors, the
// Connect (connect-go v1) unary [Interceptor] and [ClientInterceptor], and
// the OpenTelemetry metrics and traces of every decision. The same engine
// serves the other adapters: package httpmw (net/http), package grpcmw
// (grpc-go, and grpc-gateway in front of it) and package connectv2
// (connect-go v2). Packages store/memory, store/redisstore and
// store/pgstore are stores; package storetest checks a store; cmd/idemctl
// inspects and frees keys.
//
// What it guarantees, for requests that carry a key:
//   - Of any number of concurrent requests with one key (under one scope and
//     route), on any number of processes sharing a store, exactly one runs
//     the handler; the others get a conflict, or wait and get its answer.
//   - Once a response is stored, the handler does not run again for that key
//     until the record expires; the stored response is written before the
//     first client gets its answer.
//   - A key reused with a different payload is rejected, and nothing runs.
//
// What it does not: a process that dies after the handler's side effect and
// before the response is stored leaves a claim that expires with its lease;
// the next retry then runs the handler again. With store/pgstore, a handler
// that makes its writes in the transaction pgstore.Tx hands it closes that
// gap for those writes: they commit exactly when the response is stored. A
// store that loses data (see the stores' documentation) loses the
// protection with it.
package idempotency
