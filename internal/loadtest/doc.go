// Package loadtest measures the net/http middleware over Redis as a service
// sees it: 64 concurrent clients send requests over real loopback HTTP to an
// httptest server, whose store is a throwaway redis-server on the same
// machine (or the Redis at REDIS_ADDR). It has no code of its own; its
// benchmarks are in loadtest_test.go.
//
// Every request carries the same headers and a 13-byte JSON body, and the
// handler answers 201 with a 9-byte JSON body. BenchmarkLoopback runs:
//
//   - Bare: the handler alone.
//   - Baseline: the handler plus two plain Redis round trips of the sizes
//     the middleware sends (a GET of a key, then a SET of a record-sized
//     value with an expiry), on a go-redis client with the same options.
//     It is what a first execution cannot go below: the middleware's
//     target is at least 0.9 times its throughput.
//   - First: the middleware over redisstore, a fresh key per request: a
//     claim and a completion, two round trips.
//   - Replay and ReplayLocalCache: replays of 16 hot keys, without and with
//     redisstore.WithLocalCache (which answers them without a round trip).
//   - NoKey: the middleware, on requests without a key.
//
// Each reports requests per second ("req/s") beside ns/op, and the CPU time
// per request of the test process, clients and server together
// ("cpu-ns/op"), and of Redis ("redis-cpu-ns/op", from INFO cpu, so only
// meaningful on a Redis of the benchmark's own). On a machine whose other
// load takes CPU from the single-threaded Redis, Redis's time per request
// bounds the throughput. The machine is usually shared, and its load drifts:
// compare medians of several runs, with the runs of the baseline and the
// guarded paths interleaved, rather than -count, which runs each benchmark
// its whole count at once:
//
//	go test -c -o loadtest.test ./internal/loadtest
//	for round in 1 2 3 4 5 6; do
//		for bench in Baseline First Bare NoKey Replay ReplayLocalCache; do
//			./loadtest.test -test.run '^$' -test.bench "Loopback/$bench\$" -test.benchtime 2s
//		done
//	done | tee loadtest.txt
//
// benchstat loadtest.txt then gives the medians and their spread.
package loadtest
