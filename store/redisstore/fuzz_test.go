package redisstore

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/internal/redistest"
)

// FuzzDecodeClaim feeds the claim script's reply decoder replies of any
// shape (a Redis reply that a foreign value, a proxy or a future script
// could produce): it never panics, and it returns either an error wrapping
// errBadReply and no result, or exactly the result that an independent
// reading of claim.lua's three answers gives: {1} claimed, {2, pttl} in
// flight with a lease left that is never negative, {3, "d"..record, pttl}
// completed with that record, where a completed record's pttl is its time
// to live or -1.
func FuzzDecodeClaim(f *testing.F) {
	f.Add(uint8(0), uint8(1), uint8(0), uint8(0), uint8(0), int64(1), int64(0), "")
	f.Add(uint8(0), uint8(2), uint8(0), uint8(0), uint8(0), int64(2), int64(1500), "")
	f.Add(uint8(0), uint8(2), uint8(0), uint8(0), uint8(0), int64(2), int64(-1), "")
	f.Add(uint8(0), uint8(3), uint8(0), uint8(1), uint8(0), int64(3), int64(86400000), `d{"v":1,"s":200}`)
	f.Add(uint8(0), uint8(3), uint8(0), uint8(1), uint8(0), int64(3), int64(-1), "d")
	f.Add(uint8(0), uint8(3), uint8(0), uint8(1), uint8(0), int64(3), int64(-2), "d")
	f.Add(uint8(0), uint8(2), uint8(0), uint8(1), uint8(0), int64(3), int64(0), "d")
	f.Add(uint8(0), uint8(3), uint8(0), uint8(1), uint8(0), int64(3), int64(1000), "ctoken")
	f.Add(uint8(0), uint8(3), uint8(0), uint8(1), uint8(0), int64(3), int64(1000), "")
	f.Add(uint8(0), uint8(2), uint8(0), uint8(1), uint8(0), int64(2), int64(0), "1500")
	f.Add(uint8(0), uint8(3), uint8(0), uint8(0), uint8(0), int64(1), int64(1), "")
	f.Add(uint8(0), uint8(0), uint8(0), uint8(0), uint8(0), int64(0), int64(0), "")
	f.Add(uint8(0), uint8(1), uint8(1), uint8(0), uint8(0), int64(0), int64(0), "1")
	f.Add(uint8(0), uint8(2), uint8(4), uint8(4), uint8(0), int64(2), int64(10), "")
	f.Add(uint8(1), uint8(0), uint8(0), uint8(0), uint8(0), int64(0), int64(0), "")
	f.Add(uint8(2), uint8(0), uint8(0), uint8(0), uint8(0), int64(0), int64(0), "d")
	f.Add(uint8(3), uint8(0), uint8(0), uint8(0), uint8(0), int64(1), int64(0), "")
	f.Fuzz(func(t *testing.T, top, n, k0, k1, k2 uint8, i0, i1 int64, s string) {
		// i0 plays the answer's code and i1 a PTTL, wherever they stand.
		ints := [3]int64{i0, i1, i1}
		kinds := [3]uint8{k0, k1, k2}
		element := func(j int) any {
			switch kinds[j] % 7 {
			case 0:
				return ints[j]
			case 1:
				return s
			case 2:
				return nil
			case 3:
				return []any{ints[j], s}
			case 4:
				return float64(ints[j])
			case 5:
				return errors.New(s)
			default:
				return ints[j] != 0
			}
		}
		var reply any
		switch top % 4 {
		case 0:
			values := make([]any, int(n%4))
			for j := range values {
				values[j] = element(j)
			}
			reply = values
		case 1:
			reply = nil
		case 2:
			reply = s
		default:
			reply = i0
		}

		got, err := decodeClaim(reply)
		want, ok := claimOracle(reply)
		if !ok {
			if err == nil || !errors.Is(err, errBadReply) {
				t.Fatalf("decodeClaim(%#v) = %+v, %v; want an error wrapping errBadReply", reply, got, err)
			}
			if got.State != 0 || got.LeaseLeft != 0 || got.Record != nil {
				t.Fatalf("decodeClaim(%#v) returned %+v with its error", reply, got)
			}
			return
		}
		if err != nil {
			t.Fatalf("decodeClaim(%#v) = %v; want %+v", reply, err, want)
		}
		if got.LeaseLeft < 0 {
			t.Fatalf("decodeClaim(%#v): negative lease left %v", reply, got.LeaseLeft)
		}
		if want.LeaseLeft < 0 {
			want.LeaseLeft = got.LeaseLeft
		}
		if got.State != want.State || got.LeaseLeft != want.LeaseLeft || !bytes.Equal(got.Record, want.Record) ||
			(got.Record == nil) != (want.Record == nil) {
			t.Fatalf("decodeClaim(%#v) = %+v; want %+v", reply, got, want)
		}
	})
}

// claimOracle reads a claim script reply as claim.lua documents it, and
// reports false for anything else.
func claimOracle(reply any) (idempotency.ClaimResult, bool) {
	values, ok := reply.([]any)
	if !ok || len(values) == 0 {
		return idempotency.ClaimResult{}, false
	}
	switch {
	case len(values) == 1 && values[0] == int64(1):
		return idempotency.ClaimResult{State: idempotency.StateClaimed}, true
	case len(values) == 2 && values[0] == int64(2):
		pttl, ok := values[1].(int64)
		if !ok {
			return idempotency.ClaimResult{}, false
		}
		// A PTTL of -1 (no expiry) tells no lease: zero, "unknown". One
		// beyond what a Duration holds has no exact answer: -1 marks it,
		// and any lease left that is not negative will do.
		left := time.Duration(-1)
		if pttl <= math.MaxInt64/int64(time.Millisecond) {
			left = time.Duration(max(pttl, 0)) * time.Millisecond
		}
		return idempotency.ClaimResult{State: idempotency.StateInFlight, LeaseLeft: left}, true
	case len(values) == 3 && values[0] == int64(3):
		v, ok := values[1].(string)
		if !ok || len(v) == 0 || v[0] != 'd' {
			return idempotency.ClaimResult{}, false
		}
		if pttl, ok := values[2].(int64); !ok || pttl < -1 {
			return idempotency.ClaimResult{}, false
		}
		return idempotency.ClaimResult{State: idempotency.StateCompleted, Record: []byte(v[1:])}, true
	}
	return idempotency.ClaimResult{}, false
}

// FuzzStoredValue writes arbitrary bytes at a storage key in a real Redis,
// as a foreign writer, a damaged restore or another version could leave
// them, and then calls the store on that key with an arbitrary token. The
// store never panics; Claim reports a completed record only for a value
// tagged 'd' and hands back exactly its bytes, reports this token's claim
// as claimed and another token's as in flight, and calls anything else an
// error; Complete, Release and Renew succeed only on this token's claim
// and otherwise return ErrNotHeld and leave the value as it was.
func FuzzStoredValue(f *testing.F) {
	f.Add([]byte(`d{"v":1,"s":200}`), "tok", uint8(0))
	f.Add([]byte("d"), "tok", uint8(0))
	f.Add([]byte("ctok"), "tok", uint8(0))
	f.Add([]byte("ctok"), "tok", uint8(1))
	f.Add([]byte("wtok"), "tok", uint8(2))
	f.Add([]byte("cother"), "tok", uint8(0))
	f.Add([]byte("wother"), "tok", uint8(1))
	f.Add([]byte("c"), "", uint8(2))
	f.Add([]byte(""), "", uint8(0))
	f.Add([]byte("x\x00\xff"), "tok", uint8(0))
	f.Add([]byte("D"), "tok", uint8(1))
	c := redistest.Client(f)
	prefix := redistest.Prefix(f, c)
	s := New(c, WithPrefix(prefix), WithLogger(slog.New(slog.DiscardHandler)))
	f.Cleanup(func() { _ = s.Close() })
	var keys atomic.Int64
	f.Fuzz(func(t *testing.T, value []byte, token string, op uint8) {
		ctx := t.Context()
		key := "fuzz-" + strconv.FormatInt(keys.Add(1), 10)
		if err := c.Set(ctx, prefix+key, value, time.Minute).Err(); err != nil {
			t.Fatalf("SET: %v", err)
		}
		defer c.Del(ctx, prefix+key)

		tag := byte(0)
		if len(value) > 0 {
			tag = value[0]
		}
		own := (tag == 'c' || tag == 'w') && string(value[1:]) == token

		res, err := s.Claim(ctx, key, token, time.Minute)
		switch {
		case tag == 'd':
			if err != nil || res.State != idempotency.StateCompleted || !bytes.Equal(res.Record, value[1:]) {
				t.Fatalf("Claim on %q = %+v, %v; want the completed record %q", value, res, err, value[1:])
			}
		case own:
			if err != nil || res.State != idempotency.StateClaimed {
				t.Fatalf("Claim on %q with token %q = %+v, %v; want claimed", value, token, res, err)
			}
		case tag == 'c' || tag == 'w':
			if err != nil || res.State != idempotency.StateInFlight || res.LeaseLeft <= 0 || res.LeaseLeft > time.Minute {
				t.Fatalf("Claim on %q with token %q = %+v, %v; want in flight with a lease left", value, token, res, err)
			}
		default:
			if err == nil || !errors.Is(err, errBadReply) || res.Record != nil {
				t.Fatalf("Claim on %q = %+v, %v; want an error", value, res, err)
			}
		}
		if err := mustHold(t, c.Get(ctx, prefix+key).Val(), value, "Claim"); err != nil {
			t.Fatal(err)
		}

		var name string
		switch op % 3 {
		case 0:
			name, err = "Complete", s.Complete(ctx, key, token, []byte(`{"v":1}`), time.Minute)
		case 1:
			name, err = "Release", s.Release(ctx, key, token)
		default:
			name, err = "Renew", s.Renew(ctx, key, token, time.Minute)
		}
		if own {
			if err != nil {
				t.Fatalf("%s on this token's claim %q: %v", name, value, err)
			}
			return
		}
		if !errors.Is(err, idempotency.ErrNotHeld) {
			t.Fatalf("%s on %q with token %q = %v; want ErrNotHeld", name, value, token, err)
		}
		if err := mustHold(t, c.Get(ctx, prefix+key).Val(), value, name); err != nil {
			t.Fatal(err)
		}
	})
}

// mustHold reports an error unless the key still holds value.
func mustHold(t *testing.T, got string, value []byte, after string) error {
	t.Helper()
	if got != string(value) {
		return fmt.Errorf("after %s the key holds %q, not %q", after, got, value)
	}
	return nil
}
