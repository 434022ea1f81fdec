package redisstore

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemkey/idempotency"
)

// Values stored under a key start with a one-byte tag: a claim is the tag
// and the token, a completed record the tag and the record's bytes. A
// string is the cheapest Redis value there is: one allocation in Redis, one
// GET to read, and its TTL is the lease or the expiry.
const (
	tagClaim  = 'c' // a live claim: "c" + token
	tagMarked = 'w' // a live claim that a waiter has marked: "w" + token
	tagRecord = 'd' // a completed record: "d" + record
)

var (
	//go:embed claim.lua
	claimLua    string
	claimScript = redis.NewScript(claimLua)

	//go:embed complete.lua
	completeLua    string
	completeScript = redis.NewScript(completeLua)

	//go:embed release.lua
	releaseLua    string
	releaseScript = redis.NewScript(releaseLua)

	//go:embed renew.lua
	renewLua    string
	renewScript = redis.NewScript(renewLua)

	//go:embed mark.lua
	markLua    string
	markScript = redis.NewScript(markLua)
)

// ErrClosed is returned by [Store.Wait] once [Store.Close] has been called.
var ErrClosed = errors.New("redisstore: store closed")

// errBadReply means that a script answered something it never answers:
// the key holds a value that this package did not write.
var errBadReply = errors.New("redisstore: unexpected reply from Redis")

// Store is an [idempotency.Store] and [idempotency.Waiter] on Redis. It is
// safe for concurrent use, and any number of stores, in any number of
// processes, may share one Redis: stores with the same prefix share their
// claims and records.
type Store struct {
	client  redis.UniversalClient
	prefix  string
	channel string
	logger  *slog.Logger
	poll    time.Duration
	// cache holds completed records under [WithLocalCache]; nil without.
	cache *localCache

	// ctx ends when the store is closed; it bounds the subscription.
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	closed  bool
	waiting waitState
}

var (
	_ idempotency.Store  = (*Store)(nil)
	_ idempotency.Waiter = (*Store)(nil)
)

// New returns a store that keeps its claims and records in the Redis that
// client reaches: a standalone server, a Cluster, or a Sentinel-managed
// failover client. The store does not own client: [Store.Close] leaves it
// open. New panics if client is nil.
//
// go-redis honours context deadlines only when the client's options have
// ContextTimeoutEnabled; New logs a warning when it can see that they do
// not.
func New(client redis.UniversalClient, opts ...Option) *Store {
	if client == nil {
		panic("redisstore: New: nil client")
	}
	cfg := config{prefix: DefaultPrefix, logger: slog.Default(), poll: DefaultPollInterval}
	for _, opt := range opts {
		opt.apply(&cfg)
	}
	channel := cfg.prefix + "wake"
	if cfg.prefix == "" {
		channel = DefaultPrefix + "wake"
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Store{
		client:  client,
		prefix:  cfg.prefix,
		channel: channel,
		logger:  cfg.logger,
		poll:    cfg.poll,
		ctx:     ctx,
		cancel:  cancel,
	}
	if cfg.cacheEntries > 0 {
		s.cache = newLocalCache(cfg.cacheEntries)
	}
	if enabled, known := contextTimeoutEnabled(client); known && !enabled {
		s.logger.Warn("redisstore: the Redis client's ContextTimeoutEnabled is off, " +
			"so go-redis ignores context deadlines and store calls are bounded only by " +
			"the client's own dial, read and write timeouts; set ContextTimeoutEnabled: true")
	}
	return s
}

func contextTimeoutEnabled(client redis.UniversalClient) (enabled, known bool) {
	// Failover clients are a *redis.Client or a *redis.ClusterClient too.
	switch c := client.(type) {
	case *redis.Client:
		return c.Options().ContextTimeoutEnabled, true
	case *redis.ClusterClient:
		return c.Options().ContextTimeoutEnabled, true
	case *redis.Ring:
		return c.Options().ContextTimeoutEnabled, true
	}
	return false, false
}

// Claim claims key for token in one round trip, or reports what the key
// holds: another live claim, with its lease left, or a completed record.
// With [WithLocalCache], a key whose completed record the store has in its
// cache is answered from there, with no round trip. A lease longer than
// [MaxTTL] lasts MaxTTL.
func (s *Store) Claim(ctx context.Context, key, token string, lease time.Duration) (idempotency.ClaimResult, error) {
	if lease <= 0 {
		return idempotency.ClaimResult{}, fmt.Errorf("redisstore: claim: lease must be positive, got %v", lease)
	}
	var sent int64
	if s.cache != nil {
		sent = s.cache.now()
		if record, ok := s.cache.get(key, sent); ok {
			return idempotency.ClaimResult{State: idempotency.StateCompleted, Record: record}, nil
		}
	}
	claim, marked := claimValues(token)
	reply, err := claimScript.Run(ctx, s.client, []string{s.prefix + key},
		claim, millis(lease), marked).Result()
	if err != nil {
		return idempotency.ClaimResult{}, fmt.Errorf("redisstore: claim: %w", err)
	}
	res, err := decodeClaim(reply)
	if err != nil {
		return idempotency.ClaimResult{}, fmt.Errorf("redisstore: claim: %w", err)
	}
	if s.cache != nil && res.State == idempotency.StateCompleted {
		// Redis read the TTL after the request was sent, so counting it
		// from then ends the entry no later than the record.
		s.cache.put(key, res.Record, deadlineAfter(sent, recordTTL(reply)))
	}
	return res, nil
}

// decodeClaim reads the answer of the claim script: {1} claimed, {2, pttl}
// in flight, {3, value, pttl} completed, where pttl is the key's time to
// live in milliseconds and -1 when it has none.
func decodeClaim(reply any) (idempotency.ClaimResult, error) {
	values, _ := reply.([]any)
	if len(values) == 0 {
		return idempotency.ClaimResult{}, errBadReply
	}
	code, _ := values[0].(int64)
	switch {
	case code == 1 && len(values) == 1:
		return idempotency.ClaimResult{State: idempotency.StateClaimed}, nil
	case code == 2 && len(values) == 2:
		pttl, ok := values[1].(int64)
		if !ok {
			return idempotency.ClaimResult{}, errBadReply
		}
		// A claim without a TTL (-1) was not written by this package;
		// its lease left is unknown. A TTL of centuries saturates rather
		// than overflow into a negative duration.
		left := time.Duration(min(max(pttl, 0), math.MaxInt64/int64(time.Millisecond))) * time.Millisecond
		return idempotency.ClaimResult{State: idempotency.StateInFlight, LeaseLeft: left}, nil
	case code == 3 && len(values) == 3:
		v, ok := values[1].(string)
		if !ok || v == "" || v[0] != tagRecord {
			return idempotency.ClaimResult{}, fmt.Errorf("%w: the key holds neither a claim nor a record", errBadReply)
		}
		if pttl, ok := values[2].(int64); !ok || pttl < -1 {
			return idempotency.ClaimResult{}, errBadReply
		}
		return idempotency.ClaimResult{State: idempotency.StateCompleted, Record: []byte(v[1:])}, nil
	}
	return idempotency.ClaimResult{}, errBadReply
}

// recordTTL returns the time to live of a completed record from a claim
// reply that [decodeClaim] accepted, negative when the record never
// expires.
func recordTTL(reply any) time.Duration {
	values, _ := reply.([]any)
	pttl, _ := values[2].(int64)
	if pttl < 0 {
		return -1
	}
	if pttl > math.MaxInt64/int64(time.Millisecond) {
		// Hundreds of years: as good as never.
		return -1
	}
	return time.Duration(pttl) * time.Millisecond
}

// Complete replaces token's live claim on key with record, which Redis then
// expires after expiry (zero: never; longer than [MaxTTL]: MaxTTL), in one
// round trip. If a waiter marked
// the claim, the same script publishes its wake-up. With [WithLocalCache],
// the store then keeps the record in its cache.
func (s *Store) Complete(ctx context.Context, key, token string, record []byte, expiry time.Duration) error {
	if expiry < 0 {
		return fmt.Errorf("redisstore: complete: expiry must not be negative, got %v", expiry)
	}
	// The tag goes on here rather than in Lua, so that Redis, which every
	// instance shares, does not copy the record once more.
	value := make([]byte, 1+len(record))
	value[0] = tagRecord
	copy(value[1:], record)
	var ms int64
	if expiry > 0 {
		ms = millis(expiry)
	}
	var sent int64
	if s.cache != nil {
		sent = s.cache.now()
	}
	claim, marked := claimValues(token)
	reply, err := completeScript.Run(ctx, s.client, []string{s.prefix + key},
		claim, marked, value, ms, s.channel).Result()
	if err := decodeDone("complete", reply, err); err != nil {
		return err
	}
	if s.cache != nil {
		// Redis set the expiry after the request was sent. The value is
		// this call's own copy, which nothing else writes to.
		ttl := min(expiry, MaxTTL)
		if expiry == 0 {
			ttl = -1
		}
		s.cache.put(key, value[1:], deadlineAfter(sent, ttl))
	}
	return nil
}

// Release deletes token's live claim on key in one round trip. It never
// deletes a completed record. If a waiter marked the claim, the same script
// publishes its wake-up.
func (s *Store) Release(ctx context.Context, key, token string) error {
	claim, marked := claimValues(token)
	reply, err := releaseScript.Run(ctx, s.client, []string{s.prefix + key},
		claim, marked, s.channel).Result()
	return decodeDone("release", reply, err)
}

// Renew sets the lease of token's live claim on key to lease from now, in
// one round trip; a lease longer than [MaxTTL] lasts MaxTTL. It never
// touches a completed record.
func (s *Store) Renew(ctx context.Context, key, token string, lease time.Duration) error {
	if lease <= 0 {
		return fmt.Errorf("redisstore: renew: lease must be positive, got %v", lease)
	}
	claim, marked := claimValues(token)
	reply, err := renewScript.Run(ctx, s.client, []string{s.prefix + key},
		claim, marked, millis(lease)).Result()
	return decodeDone("renew", reply, err)
}

// claimValues returns the two values that token's live claim can have:
// unmarked and marked by a waiter. The scripts compare whole values, which
// costs Lua less than taking them apart. Both share one allocation.
func claimValues(token string) (claim, marked string) {
	var b strings.Builder
	b.Grow(2 * (1 + len(token)))
	b.WriteByte(tagClaim)
	b.WriteString(token)
	b.WriteByte(tagMarked)
	b.WriteString(token)
	s := b.String()
	return s[:1+len(token)], s[1+len(token):]
}

// decodeDone reads the answer of the complete, release and renew scripts:
// 1 when they did their work, 0 when the key is not the token's live claim.
func decodeDone(op string, reply any, err error) error {
	if err != nil {
		return fmt.Errorf("redisstore: %s: %w", op, err)
	}
	if n, ok := reply.(int64); ok {
		switch n {
		case 1:
			return nil
		case 0:
			return idempotency.ErrNotHeld
		}
	}
	return fmt.Errorf("redisstore: %s: %w", op, errBadReply)
}

// MaxTTL is the longest lease or record expiry that the store gives a key.
// A longer one, up to [math.MaxInt64] nanoseconds, is cut to MaxTTL rather
// than refused: Redis adds a TTL to its clock in milliseconds and refuses a
// sum that overflows, and a century is as good as never for a claim or a
// record.
const MaxTTL = 100 * 365 * 24 * time.Hour

// millis returns d in whole milliseconds, the unit of PX and PEXPIRE: rounded
// up, so that a lease or expiry is never shorter than asked and a positive
// one is never zero, and cut to [MaxTTL], so that Redis accepts it.
func millis(d time.Duration) int64 {
	d = min(d, MaxTTL)
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}
