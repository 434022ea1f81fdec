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

// renewCountingStore counts the renewals of each storage key.
type renewCountingStore struct {
	idempotency.Store
	mu      sync.Mutex
	renewed map[string]int
}

func (s *renewCountingStore) Renew(ctx context.Context, key, token string, lease time.Duration) error {
	s.mu.Lock()
	s.renewed[key]++
	s.mu.Unlock()
	return s.Store.Renew(ctx, key, token, lease)
}

func (s *renewCountingStore) total() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.renewed {
		n += c
	}
	return n
}

func TestEngineRenewsOnlyExecutionsInProgress(t *testing.T) {
	t.Parallel()
	const (
		lease = 300 * time.Millisecond // renewed every 100 ms
		held  = 900 * time.Millisecond
		n     = 16
	)
	s := &renewCountingStore{Store: newMemory(t), renewed: map[string]int{}}
	e := idempotency.NewEngine(s, idempotency.WithLease(lease))
	other := idempotency.NewEngine(s, idempotency.WithLease(lease))

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
		time.Sleep(lease / 20)
	}
	deadline := time.Now().Add(held)
	for time.Now().Before(deadline) {
		for i := range n {
			_, _, err := other.Begin(t.Context(), req("long-"+strconv.Itoa(i), "a"))
			require.ErrorIs(t, err, idempotency.ErrInFlight, "execution %d lost its claim", i)
		}
		time.Sleep(lease / 10)
	}
	for _, x := range long {
		assert.False(t, x.LeaseLost())
		require.NoError(t, x.Complete(jsonRecord(`{}`)))
	}

	s.mu.Lock()
	assert.Len(t, s.renewed, n, "only the long executions were renewed")
	for key, c := range s.renewed {
		// About 9 renewals in 900 ms; a loaded machine may fire late.
		assert.GreaterOrEqual(t, c, 3, "renewals of %s", key)
	}
	s.mu.Unlock()

	// Nothing is renewed once every execution ended. Waiting is the only
	// way to see that something does not happen: three intervals.
	before := s.total()
	time.Sleep(lease)
	assert.Equal(t, before, s.total(), "renewals after the executions ended")
}

// slowRenewStore's first renewal is slow, as a distant store's can be, and
// lets the test start other executions just before it returns.
type slowRenewStore struct {
	idempotency.Store
	slow    time.Duration
	joining chan struct{} // the first renewal is about to return
	joined  chan struct{} // the test started its other executions
	sent    chan time.Time
	once    sync.Once
}

func (s *slowRenewStore) Renew(ctx context.Context, key, token string, lease time.Duration) error {
	sent := time.Now()
	select {
	case s.sent <- sent:
	default:
	}
	s.once.Do(func() {
		time.Sleep(s.slow)
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
	const (
		lease    = 900 * time.Millisecond
		interval = lease / 3
	)
	s := &slowRenewStore{
		Store: newMemory(t), slow: interval * 5 / 6,
		joining: make(chan struct{}), joined: make(chan struct{}), sent: make(chan time.Time, 8),
	}
	e := idempotency.NewEngine(s, idempotency.WithLease(lease))

	x, _, err := e.Begin(t.Context(), req("slow", "a"))
	require.NoError(t, err)
	first := <-s.sent
	<-s.joining
	var later []*idempotency.Execution
	for i := range 8 {
		y, _, err := e.Begin(t.Context(), req("later-"+strconv.Itoa(i), "a"))
		require.NoError(t, err)
		later = append(later, y)
	}
	close(s.joined)
	// The next renewal to be sent is the slow execution's: the others
	// started an interval later.
	second := <-s.sent
	// Without its own place in the queue it would wait for the others, some
	// 250 ms later; a loaded machine fires timers late, but not that late.
	assert.Less(t, second.Sub(first), interval+interval/2, "time between two renewals of one execution")
	require.NoError(t, x.Complete(jsonRecord(`{}`)))
	for _, y := range later {
		require.NoError(t, y.Release())
	}
}
