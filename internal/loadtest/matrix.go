package loadtest

import (
	"errors"
	"log/slog"
	"net/http"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/store/memory"
)

const (
	// hotKeys is how many keys the replay benchmarks cycle through.
	hotKeys = 16
	// storeRecords is how many first executions a memory store takes
	// before a fresh one replaces it.
	storeRecords = 1 << 15
)

// quiet drops what the library logs: a benchmark reads its answers, not
// its logs.
var quiet = idempotency.WithLogger(slog.New(slog.DiscardHandler))

// A Backend makes the stores of a family's guarded paths, and says what
// else the family runs on them.
type Backend struct {
	// NewStore returns an empty store. It is called for every run of a
	// guarded sub-benchmark, and again every Rotate first executions.
	NewStore func(b *testing.B) idempotency.Store
	// Options configure every guarded handler.
	Options []idempotency.Option
	// Rotate, if positive, is how many first executions a store takes
	// before a fresh one from NewStore replaces it.
	Rotate int
	// Baseline, if not nil, returns the round trips of a Baseline
	// sub-benchmark: the bare handler after them is what a first
	// execution on this backend cannot go below.
	Baseline func(b *testing.B, w *Workload) RoundTrips
	// LocalCache, if not nil, returns an empty store that keeps completed
	// records in process, for a ReplayLocalCache sub-benchmark.
	LocalCache func(b *testing.B) idempotency.Store
	// Clients is how many goroutines send requests at once in a parallel
	// family; zero means GOMAXPROCS, as b.RunParallel does by default.
	Clients int
}

// Memory returns the backend of the memory store.
func Memory() Backend {
	return Backend{
		NewStore: func(*testing.B) idempotency.Store {
			// Room for twice a rotation's records: in a parallel run, the
			// requests that picked a store before a fresh one replaced it
			// still complete in it.
			return memory.New(memory.WithMaxRecords(2 * storeRecords))
		},
		Options: []idempotency.Option{quiet},
		// Every first execution adds a record. A fresh store every
		// storeRecords of them keeps the heap, and so the collector's
		// work and the store's own cost, at a steady size whatever b.N
		// is, as in a server whose records expire; serial and parallel
		// runs measure a store of the same size.
		Rotate: storeRecords,
	}
}

// Run runs a family of sub-benchmarks of w on be's stores, serially with
// b.Loop or, with parallel, from concurrent goroutines with b.RunParallel:
//
//   - Warmup and Bare: the bare handler.
//   - NoKey: the guarded handler, on requests without a key.
//   - Baseline, if be has one: the bare handler after be's round trips,
//     with a fresh key per request.
//   - First: the guarded handler, a first execution with a fresh key per
//     request.
//   - Replay: the guarded handler, replays of hotKeys keys recorded before
//     the clock starts, in turn.
//   - ReplayLocalCache, if be has a local cache: Replay on a store with it.
//
// A Bare run stands before and after every other path, and Baseline runs
// before and after First, so that internal/benchratio can compare each path
// with its neighbours in time. Every path sends the same headers and builds
// its keys alike, and every answer is checked: its status and body are the
// bare handler's, and it is a replay exactly where one is expected.
func Run(b *testing.B, w *Workload, be Backend, parallel bool) {
	f := &family{w: w, be: be, parallel: parallel}
	b.Run("Warmup", f.bare)
	b.Run("Bare", f.bare)
	b.Run("NoKey", f.noKey)
	b.Run("Bare", f.bare)
	if be.Baseline != nil {
		b.Run("Baseline", f.baseline)
		b.Run("First", f.first)
		b.Run("Baseline", f.baseline)
	} else {
		b.Run("First", f.first)
	}
	b.Run("Bare", f.bare)
	b.Run("Replay", f.replay(be.NewStore))
	b.Run("Bare", f.bare)
	if be.LocalCache != nil {
		b.Run("ReplayLocalCache", f.replay(be.LocalCache))
		b.Run("Bare", f.bare)
	}
}

// family holds what the sub-benchmarks of one [Run] share.
type family struct {
	w        *Workload
	be       Backend
	parallel bool
}

// handlerFunc returns the handler of the nth request of a run, counted
// from one.
type handlerFunc func(n uint64) http.Handler

func fixed(h http.Handler) handlerFunc {
	return func(uint64) http.Handler { return h }
}

func (f *family) guard(store idempotency.Store, opts ...idempotency.Option) http.Handler {
	return f.w.Guard(store, slices.Concat(f.be.Options, opts)...)
}

func (f *family) bare(b *testing.B) {
	f.run(b, fixed(f.w.Bare()), false, false)
}

func (f *family) noKey(b *testing.B) {
	// The library looks for another header, so that the requests carry the
	// same headers as on the other paths and still have no key.
	f.run(b, fixed(f.guard(f.be.NewStore(b), idempotency.WithIdempotencyHeader("X-Other-Key"))), false, false)
}

func (f *family) baseline(b *testing.B) {
	f.run(b, fixed(f.w.Around(f.be.Baseline(b, f.w))), false, false)
}

func (f *family) first(b *testing.B) {
	h := f.guard(f.be.NewStore(b))
	rotate := uint64(f.be.Rotate)
	switch {
	case rotate == 0:
		f.run(b, fixed(h), false, false)
	case !f.parallel:
		// The fresh store is made with the clock stopped.
		f.run(b, func(n uint64) http.Handler {
			if n%rotate == 0 {
				b.StopTimer()
				h = f.guard(f.be.NewStore(b))
				b.StartTimer()
			}
			return h
		}, false, false)
	default:
		// The clock cannot stop while other goroutines run: the request
		// that reaches a multiple of rotate makes the fresh store on the
		// clock, a cost spread over rotate requests.
		var cur atomic.Pointer[http.Handler]
		cur.Store(&h)
		f.run(b, func(n uint64) http.Handler {
			if n%rotate == 0 {
				fresh := f.guard(f.be.NewStore(b))
				cur.Store(&fresh)
			}
			return *cur.Load()
		}, false, false)
	}
}

func (f *family) replay(newStore func(*testing.B) idempotency.Store) func(*testing.B) {
	return func(b *testing.B) {
		h := f.guard(newStore(b))
		var buf []byte
		for i := range hotKeys {
			if err := f.w.Serve(b.Context(), h, f.w.key(&buf, uint64(i)), false); err != nil {
				b.Fatal(err)
			}
		}
		f.run(b, fixed(h), true, true)
	}
}

// run sends b.N requests, the nth to handler(n), with a fresh key each or,
// with hot, the keys 0 to hotKeys-1 in turn, and fails b on an answer that
// is not the one expected. The requests of a parallel family come from
// be.Clients goroutines.
func (f *family) run(b *testing.B, handler handlerFunc, hot, wantReplay bool) {
	ctx := b.Context()
	// One counter for all goroutines: the keys of a run are all distinct,
	// and every path, bare or guarded, does the same work to make them.
	var next atomic.Uint64
	do := func(buf *[]byte) error {
		n := next.Add(1)
		k := n
		if hot {
			k %= hotKeys
		}
		return f.w.Serve(ctx, handler(n), f.w.key(buf, k), wantReplay)
	}
	clients := 1
	if f.parallel {
		clients = f.be.Clients
		if procs := runtime.GOMAXPROCS(0); clients > 0 {
			b.SetParallelism((clients + procs - 1) / procs)
		} else {
			clients = procs
		}
	}
	// A request from every client before the clock starts opens the
	// connections that a client of a remote store needs.
	var wg sync.WaitGroup
	errs := make([]error, clients)
	for i := range clients {
		wg.Go(func() {
			var buf []byte
			errs[i] = do(&buf)
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	if !f.parallel {
		var buf []byte
		for b.Loop() {
			if err := do(&buf); err != nil {
				b.Fatal(err)
			}
		}
		return
	}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var buf []byte
		for pb.Next() {
			if err := do(&buf); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
