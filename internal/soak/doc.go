// Package soak holds the library's soak and fault test: several instances
// of the net/http middleware, each with a Redis client and store of its
// own, share one real redis-server (append-only, fsync on every write)
// through fault proxies, while many clients send, retry and abandon
// requests with keys drawn from a shared pool, and faults are injected:
// Redis killed and restarted, latency added, connections cut, an instance
// cut off from Redis (refused, or its traffic held beyond the store
// timeout) for longer than a lease. The handler answers JSON, sometimes
// after more than a lease, and sometimes panics, answers text, or gives up
// when its request ends.
//
// What it checks, once the run is over:
//   - once a key's response has been stored, the handler never runs for
//     that key again, and no key ever holds two stored responses;
//   - every client that got a successful JSON answer for a key got the same
//     body, replays included, and every replay is a response of that key;
//   - responses that the middleware releases (a panic, a non-JSON answer,
//     a handler that returned because its request ended) are never stored;
//   - no goroutine is left once everything is closed, and the heap ends
//     near where it started.
//
// What it does not hide: a handler may run twice for one key when the
// first execution's response could not be stored. The test counts those
// runs apart, each with the fault that explains it (a holder cut off from
// Redis until its lease ran out, Redis down, a holder that stalled past its
// lease, a store call that failed as SPEC §6.2 allows) and fails on any
// that nothing explains.
//
// The test runs only when IDEMPOTENCY_SOAK is set to a duration:
//
//	IDEMPOTENCY_SOAK=60s go test -race -run Soak ./internal/soak -v
//
// The package has no code of its own: everything is in its tests.
package soak
