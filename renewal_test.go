package idempotency_test

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
)

// renewCountingStore counts the renewals of each storage key and reports
// each one on renewed.
type renewCountingStore struct {
	idempotency.Store
	mu     sync.Mutex
	counts map[string]int
	leases []time.Duration
	sent   chan string // the storage key of each renewal, as it is sent
}

func newRenewCountingStore(t *testing.T) *renewCountingStore {
	return &renewCountingStore{Store: newMemory(t), counts: map[string]int{}, sent: make(chan string, 1024)}
}

func (s *renewCountingStore) Renew(ctx context.Context, key, token string, lease time.Duration) error {
	s.mu.Lock()
	s.counts[key]++
	s.leases = append(s.leases, lease)
	s.mu.Unlock()
	s.sent <- key
	return s.Store.Renew(ctx, key, token, lease)
}

func (s *renewCountingStore) total() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.counts {
		n += c
	}
	return n
}

// awaitRenewals waits until n renewals were sent and returns their storage
// keys. The bound only catches a renewal that never comes: the renewals
// were started before, by [idempotency.AdvanceRenewals].
func awaitRenewals(t *testing.T, sent <-chan string, n int) []string {
	t.Helper()
	keys := make([]string, 0, n)
	timeout := time.After(10 * time.Second)
	for len(keys) < n {
		select {
		case key := <-sent:
			keys = append(keys, key)
		case <-timeout:
			require.FailNow(t, "renewals missing", "%d of %d renewals sent", len(keys), n)
		}
	}
	return keys
}

// The renewal tests move the renewal queue's clock by hand
// ([idempotency.AdvanceRenewals]), with leases far longer than the tests
// run, so that a busy machine that fires timers late changes nothing.
const testLease = time.Hour

func TestEngineRenewsOnlyExecutionsInProgress(t *testing.T) {
	t.Parallel()
	const (
		interval = testLease / 3
		n        = 16
		rounds   = 4
	)
	s := newRenewCountingStore(t)
	e := idempotency.NewEngine(s, idempotency.WithLease(testLease))
	other := idempotency.NewEngine(s, idempotency.WithLease(testLease))

	// Executions that start at different times each keep their own lease,
	// whichever queue they share; those that end at once are never renewed.
	var long []*idempotency.Execution
	for i := range n {
		x, _, err := e.Begin(t.Context(), req("long-"+strconv.Itoa(i), "a"))
		require.NoError(t, err)
		long = append(long, x)
		y, _, err := e.Begin(t.Context(), req("short-"+strconv.Itoa(i), "a"))
		require.NoError(t, err)
		require.NoError(t, y.Complete(jsonRecord(`{}`)))
		idempotency.AdvanceRenewals(e, interval/(2*n))
	}
	// Half an interval has passed: nothing is due yet.
	assert.Zero(t, s.total(), "renewals before the first interval ended")

	for round := 1; round <= rounds; round++ {
		// Every long execution is due once per interval, and only once.
		idempotency.AdvanceRenewals(e, interval)
		awaitRenewals(t, s.sent, n)
		for i := range n {
			_, _, err := other.Begin(t.Context(), req("long-"+strconv.Itoa(i), "a"))
			require.ErrorIs(t, err, idempotency.ErrInFlight, "execution %d lost its claim", i)
		}
	}
	for _, x := range long {
		assert.False(t, x.LeaseLost())
		require.NoError(t, x.Complete(jsonRecord(`{}`)))
	}

	s.mu.Lock()
	assert.Len(t, s.counts, n, "only the long executions were renewed")
	for key, c := range s.counts {
		assert.Equal(t, rounds, c, "renewals of %s", key)
	}
	for _, lease := range s.leases {
		assert.Equal(t, testLease, lease, "each renewal asks for a whole lease")
	}
	s.mu.Unlock()

	// Nothing is renewed once every execution ended: advancing the clock
	// starts renewals synchronously, so none started means none will.
	idempotency.AdvanceRenewals(e, 3*interval)
	assert.Equal(t, n*rounds, s.total(), "renewals after the executions ended")
	assert.Empty(t, s.sent, "renewals after the executions ended")
}

// slowRenewStore's first renewal is slow, as a distant store's can be: it
// waits until the test has let time pass and started other executions.
type slowRenewStore struct {
	idempotency.Store
	sent    chan string   // the storage key of each renewal, as it is sent
	joining chan struct{} // the first renewal is under way
	joined  chan struct{} // the test moved the clock and started other executions
	once    sync.Once
}

func (s *slowRenewStore) Renew(ctx context.Context, key, token string, lease time.Duration) error {
	s.sent <- key
	s.once.Do(func() {
		close(s.joining)
		<-s.joined
	})
	return s.Store.Renew(ctx, key, token, lease)
}

func TestEngineSlowRenewalKeepsItsPlace(t *testing.T) {
	t.Parallel()
	// A renewal that took most of an interval is due again an interval
	// after it was sent, earlier than executions that started while it
	// ran: it must not wait for them.
	const interval = testLease / 3
	s := &slowRenewStore{
		Store: newMemory(t), sent: make(chan string, 64),
		joining: make(chan struct{}), joined: make(chan struct{}),
	}
	e := idempotency.NewEngine(s, idempotency.WithLease(testLease))

	x, _, err := e.Begin(t.Context(), req("slow", "a"))
	require.NoError(t, err)
	idempotency.AdvanceRenewals(e, interval)
	slowKey := awaitRenewals(t, s.sent, 1)[0]
	<-s.joining
	// The renewal takes five sixths of an interval; executions start
	// meanwhile, in every queue.
	idempotency.AdvanceRenewals(e, interval*5/6)
	var later []*idempotency.Execution
	for i := range 32 {
		y, _, err := e.Begin(t.Context(), req("later-"+strconv.Itoa(i), "a"))
		require.NoError(t, err)
		later = append(later, y)
	}
	close(s.joined)

	// An interval after the slow renewal was sent, it is due again, and
	// only it: the others started an interval later. Without its own place
	// in the queue it would wait behind them.
	idempotency.AdvanceRenewals(e, interval/6)
	assert.Equal(t, []string{slowKey}, awaitRenewals(t, s.sent, 1), "the renewal due")
	// Until the others are due too.
	idempotency.AdvanceRenewals(e, interval*5/6)
	assert.Len(t, awaitRenewals(t, s.sent, len(later)), len(later), "renewals of the later executions")

	require.NoError(t, x.Complete(jsonRecord(`{}`)))
	for _, y := range later {
		require.NoError(t, y.Release())
	}
	assert.Empty(t, s.sent, "renewals after the executions ended")
}
