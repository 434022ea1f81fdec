package memory_test

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"runtime"
	"runtime/metrics"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/store/memory"
)

// benchKey returns the i-th key of a benchmark, shaped like the engine's
// storage keys: the unpadded base64 of a SHA-256 sum, 43 bytes.
func benchKey(i int) string {
	var buf [8]byte
	binary.LittleEndian.PutUint64(buf[:], uint64(i))
	sum := sha256.Sum256(buf[:])
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func benchKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = benchKey(i)
	}
	return keys
}

// benchToken is shaped like the engine's tokens: 128 random bits, 22 bytes
// of base64.
const benchToken = "q3tTe8Y0m1iZ5vUjHc2XbA"

var benchRecord = []byte(`{"s":201,"b":"eyJpZCI6IjQyIn0"}`) // 30 bytes

func BenchmarkClaim(b *testing.B) {
	keys := benchKeys(b.N)
	s := memory.New(memory.WithMaxRecords(b.N + 1))
	ctx := b.Context()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		res, err := s.Claim(ctx, keys[i], benchToken, time.Minute)
		if err != nil || res.State != idempotency.StateClaimed {
			b.Fatal(res.State, err)
		}
	}
}

func BenchmarkClaimParallel(b *testing.B) {
	keys := benchKeys(b.N)
	s := memory.New(memory.WithMaxRecords(b.N + 1))
	ctx := b.Context()
	var next atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			key := keys[next.Add(1)-1]
			if _, err := s.Claim(ctx, key, benchToken, time.Minute); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkClaimCompleted measures the replay path: the key holds a
// completed record.
func BenchmarkClaimCompleted(b *testing.B) {
	const n = 1024
	keys := benchKeys(n)
	s := memory.New()
	ctx := b.Context()
	for _, key := range keys {
		if _, err := s.Claim(ctx, key, benchToken, time.Minute); err != nil {
			b.Fatal(err)
		}
		if err := s.Complete(ctx, key, benchToken, benchRecord, time.Hour); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		res, err := s.Claim(ctx, keys[i%n], "other", time.Minute)
		if err != nil || res.State != idempotency.StateCompleted {
			b.Fatal(res.State, err)
		}
	}
}

func BenchmarkClaimCompletedParallel(b *testing.B) {
	const n = 1024
	keys := benchKeys(n)
	s := memory.New()
	ctx := b.Context()
	for _, key := range keys {
		if _, err := s.Claim(ctx, key, benchToken, time.Minute); err != nil {
			b.Fatal(err)
		}
		if err := s.Complete(ctx, key, benchToken, benchRecord, time.Hour); err != nil {
			b.Fatal(err)
		}
	}
	var next atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := int(next.Add(1)) * 7919
		for pb.Next() {
			i++
			res, err := s.Claim(ctx, keys[i%n], "other", time.Minute)
			if err != nil || res.State != idempotency.StateCompleted {
				b.Error(res.State, err)
				return
			}
		}
	})
}

// BenchmarkClaimFullParallel measures a refusal: claims of new keys in a
// store full of live claims, which search it for room in vain.
func BenchmarkClaimFullParallel(b *testing.B) {
	const n = 1024
	s := memory.New(memory.WithMaxRecords(n))
	ctx := b.Context()
	for _, key := range benchKeys(n) {
		if _, err := s.Claim(ctx, key, benchToken, time.Hour); err != nil {
			b.Fatal(err)
		}
	}
	keys := benchKeys(n + 1024)[n:]
	var next atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := int(next.Add(1)) * 7919
		for pb.Next() {
			i++
			if _, err := s.Claim(ctx, keys[i%len(keys)], benchToken, time.Hour); !errors.Is(err, memory.ErrFull) {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkClaimFullOfExpiredParallel measures claims in a store that is
// always full of entries whose lease has passed: every claim's lease is a
// nanosecond, so each claim that finds the store full drops expired ones.
func BenchmarkClaimFullOfExpiredParallel(b *testing.B) {
	const n = 1024
	s := memory.New(memory.WithMaxRecords(n))
	ctx := b.Context()
	for _, key := range benchKeys(n) {
		if _, err := s.Claim(ctx, key, benchToken, time.Nanosecond); err != nil {
			b.Fatal(err)
		}
	}
	keys := benchKeys(b.N + n)[n:]
	var next atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			res, err := s.Claim(ctx, keys[next.Add(1)-1], benchToken, time.Nanosecond)
			if err != nil || res.State != idempotency.StateClaimed {
				b.Error(res.State, err)
				return
			}
		}
	})
}

func BenchmarkComplete(b *testing.B) {
	keys := benchKeys(b.N)
	s := memory.New(memory.WithMaxRecords(b.N + 1))
	ctx := b.Context()
	for _, key := range keys {
		if _, err := s.Claim(ctx, key, benchToken, time.Minute); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if err := s.Complete(ctx, keys[i], benchToken, benchRecord, time.Hour); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkClaimComplete measures the store's share of a first execution:
// a fresh key is claimed and completed, in a store that holds 100 000
// records already.
func BenchmarkClaimComplete(b *testing.B) {
	const held = 100_000
	keys := make([]string, b.N)
	for i := range keys {
		keys[i] = benchKey(held + i)
	}
	s := filledStore(b, held, b.N)
	ctx := b.Context()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if _, err := s.Claim(ctx, keys[i], benchToken, time.Minute); err != nil {
			b.Fatal(err)
		}
		if err := s.Complete(ctx, keys[i], benchToken, benchRecord, time.Hour); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMemoryPerRecord fills a store with a million completed records
// of 30 bytes and reports the heap it holds per record: "B/record" in all,
// and "overhead-B/record" beyond the key's and the record's own bytes.
// Its ns/op is the time to fill the store.
func BenchmarkMemoryPerRecord(b *testing.B) {
	const n = 1_000_000
	for b.Loop() {
		before := heapInUse()
		// Keys are made one by one, so that no slice of them is counted.
		s := filledStore(b, n, 0)
		held := float64(heapInUse()-before) / n
		runtime.KeepAlive(s)
		b.ReportMetric(held, "B/record")
		b.ReportMetric(held-float64(len(benchKey(0))+len(benchRecord)), "overhead-B/record")
	}
}

func heapInUse() uint64 {
	runtime.GC()
	var stats runtime.MemStats
	runtime.ReadMemStats(&stats)
	return stats.HeapAlloc
}

// BenchmarkGCWithRecords measures what the records a store holds cost the
// rest of the program. The store keeps 100 000 completed records while each
// operation allocates 4 KiB of short-lived garbage, as a server handling
// requests does, and the collector runs when the heap grows. Besides ns/op,
// "gc-cpu-ns/op" is the CPU time the collector spent, per operation.
func BenchmarkGCWithRecords(b *testing.B) {
	s := filledStore(b, 100_000, 0)
	// Starts from a finished collection, so that none of the filling's
	// work is counted.
	runtime.GC()
	sample := []metrics.Sample{{Name: "/cpu/classes/gc/total:cpu-seconds"}}
	metrics.Read(sample)
	before := sample[0].Value.Float64()
	b.ReportAllocs()
	for b.Loop() {
		gcSink = make([]byte, 4096)
	}
	metrics.Read(sample)
	b.ReportMetric((sample[0].Value.Float64()-before)*1e9/float64(b.N), "gc-cpu-ns/op")
	runtime.KeepAlive(s)
}

// BenchmarkGCTime measures one full garbage collection, runtime.GC, while a
// store holds a million completed records: "gc-ns" is its time, the same as
// ns/op.
func BenchmarkGCTime(b *testing.B) {
	s := filledStore(b, 1_000_000, 0)
	runtime.GC()
	for b.Loop() {
		runtime.GC()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "gc-ns")
	runtime.KeepAlive(s)
}

// gcSink keeps the compiler from optimising allocations away.
var gcSink []byte

// filledStore returns a store holding n completed records of benchRecord,
// with room for more.
func filledStore(b *testing.B, n, more int) *memory.Store {
	b.Helper()
	ctx := b.Context()
	s := memory.New(memory.WithMaxRecords(n + more))
	for i := range n {
		key := benchKey(i)
		if _, err := s.Claim(ctx, key, benchToken, time.Minute); err != nil {
			b.Fatal(err)
		}
		if err := s.Complete(ctx, key, benchToken, benchRecord, time.Hour); err != nil {
			b.Fatal(err)
		}
	}
	return s
}
