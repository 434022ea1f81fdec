package redisstore_test

import (
	"testing"
	"time"

	"github.com/idemkey/idempotency/internal/redistest"
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
