package redisstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/idemkey/idempotency/internal/redistest"
	"github.com/idemkey/idempotency/store/redisstore"
	"github.com/idemkey/idempotency/storetest"
)

// BenchmarkClaimComplete measures a first request's store work on loopback:
// a claim and a completion, two round trips.
func BenchmarkClaimComplete(b *testing.B) {
	c := redistest.Client(b)
	s, _ := newStore(b, c)
	warmUp(b, s)
	ctx := b.Context()
	record := make([]byte, 1<<10)
	b.ReportAllocs()
	for b.Loop() {
		key, token := storetest.Key(), newToken()
		if _, err := s.Claim(ctx, key, token, time.Minute); err != nil {
			b.Fatal(err)
		}
		// A short expiry lets Redis drop the records soon after the run.
		if err := s.Complete(ctx, key, token, record, 10*time.Second); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkClaimReplay measures a replay's store work: one claim that finds
// a 1 KiB record.
func BenchmarkClaimReplay(b *testing.B) {
	c := redistest.Client(b)
	s, _ := newStore(b, c)
	warmUp(b, s)
	ctx := b.Context()
	key, token := storetest.Key(), newToken()
	if _, err := s.Claim(ctx, key, token, time.Minute); err != nil {
		b.Fatal(err)
	}
	if err := s.Complete(ctx, key, token, make([]byte, 1<<10), time.Minute); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Claim(ctx, key, newToken(), time.Minute); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkClaimReplayLocalCache measures a replay's store work with
// WithLocalCache: no round trip.
func BenchmarkClaimReplayLocalCache(b *testing.B) {
	c := redistest.Client(b)
	s, _ := newStore(b, c, redisstore.WithLocalCache(1000))
	ctx := b.Context()
	key := completedKey(b, s)
	token := newToken()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Claim(ctx, key, token, time.Minute); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkClaimCompleteParallel is BenchmarkClaimComplete from many
// goroutines at once, on one client.
func BenchmarkClaimCompleteParallel(b *testing.B) {
	c := redistest.Client(b)
	s, _ := newStore(b, c)
	warmUp(b, s)
	record := make([]byte, 1<<10)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			key, token := storetest.Key(), newToken()
			if _, err := s.Claim(ctx, key, token, time.Minute); err != nil {
				b.Error(err)
				return
			}
			if err := s.Complete(ctx, key, token, record, 10*time.Second); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkClaimReplayParallel is BenchmarkClaimReplay and
// BenchmarkClaimReplayLocalCache from many goroutines at once, on one hot
// key.
func BenchmarkClaimReplayParallel(b *testing.B) {
	tests := []struct {
		name string
		opts []redisstore.Option
	}{
		{name: "Redis"},
		{name: "LocalCache", opts: []redisstore.Option{redisstore.WithLocalCache(1000)}},
	}
	for _, tt := range tests {
		b.Run(tt.name, func(b *testing.B) {
			c := redistest.Client(b)
			s, _ := newStore(b, c, tt.opts...)
			key := completedKey(b, s)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				ctx, token := context.Background(), newToken()
				for pb.Next() {
					if _, err := s.Claim(ctx, key, token, time.Minute); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// completedKey warms s up and returns a key that holds a completed 1 KiB
// record.
func completedKey(b *testing.B, s *redisstore.Store) string {
	b.Helper()
	warmUp(b, s)
	ctx := b.Context()
	key, token := storetest.Key(), newToken()
	if _, err := s.Claim(ctx, key, token, time.Minute); err != nil {
		b.Fatal(err)
	}
	if err := s.Complete(ctx, key, token, make([]byte, 1<<10), time.Minute); err != nil {
		b.Fatal(err)
	}
	return key
}
