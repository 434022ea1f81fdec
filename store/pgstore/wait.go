package pgstore

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Waiting: a duplicate marks the claim it waits for (one UPDATE that also
// reads the lease left), and completing or releasing a marked claim sends
// its key on the table's notification channel, in the same statement, so
// that completions nobody waits for notify nothing. A notification sent in
// a handler's transaction is delivered when that transaction commits, and
// not at all if it rolls back. One connection per store, opened on the
// first Wait, listens on the channel and wakes the waiters of the key.

// channelOf names the notification channel of a table: a fixed-length
// identifier, so that no table name makes it too long.
func channelOf(table string) string {
	h := fnv.New64a()
	_, _ = h.Write([]byte(table))
	return "pgstore_" + strconv.FormatUint(h.Sum64(), 16)
}

// listener is the store's listening connection and the waiters it wakes.
type listener struct {
	mu      sync.Mutex
	started bool
	ready   chan struct{} // closed once the first LISTEN succeeded or failed
	err     error         // why the connection is down; nil while listening
	waiters map[string]map[chan struct{}]struct{}
}

// errListenerDown is wrapped by Wait's error when the listening connection
// is down: the engine then polls.
var errListenerDown = errors.New("pgstore: the notification connection is down")

// ErrClosed is returned by [Store.Wait] once [Store.Close] has been called.
var ErrClosed = errors.New("pgstore: store closed")

// Wait implements [idempotency.Waiter]. It marks the key's live claim, so
// that its completion or release notifies, and returns when the
// notification arrives, when the lease it read has run out, after the poll
// interval of [WithPollInterval] in case a notification was lost, or when
// ctx ends (with ctx's error). It returns at once when the key holds no
// live claim, and [ErrClosed] once the store is closed. A waiting duplicate
// sends one statement per wake-up, however long it waits.
func (s *Store) Wait(ctx context.Context, key string) error {
	if err := s.listen(ctx); err != nil {
		return err
	}
	wake := make(chan struct{}, 1)
	s.addWaiter(key, wake)
	defer s.removeWaiter(key, wake)

	var left int64
	err := s.pool.QueryRow(ctx, s.q.mark, key).Scan(&left)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil
	case err != nil:
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("pgstore: wait: %w", err)
	}
	timer := time.NewTimer(min(s.poll, time.Duration(left)*time.Microsecond))
	defer timer.Stop()
	select {
	case <-wake:
	case <-timer.C:
	case <-ctx.Done():
		return ctx.Err()
	case <-s.stop:
		return ErrClosed
	}
	return nil
}

// listen starts the listening connection on first use and waits until it
// listens. It returns an error while the connection is down.
func (s *Store) listen(ctx context.Context) error {
	l := &s.listener
	l.mu.Lock()
	if !l.started {
		select {
		case <-s.stop:
			l.mu.Unlock()
			return ErrClosed
		default:
		}
		l.started = true
		l.ready = make(chan struct{})
		s.background.Add(1)
		go s.listenLoop()
	}
	ready := l.ready
	l.mu.Unlock()
	select {
	case <-ready:
	case <-ctx.Done():
		return ctx.Err()
	case <-s.stop:
		return ErrClosed
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return fmt.Errorf("%w: %w", errListenerDown, l.err)
	}
	return nil
}

// listenLoop keeps a connection listening on the channel until the store
// is closed, reconnecting after a failure.
func (s *Store) listenLoop() {
	defer s.background.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-s.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	first := true
	for ctx.Err() == nil {
		err := s.listenOnce(ctx, func() {
			s.setListening(nil, &first)
		})
		if ctx.Err() != nil {
			return
		}
		s.setListening(err, &first)
		s.logger.LogAttrs(ctx, slog.LevelWarn, "pgstore: notification connection lost; waiters poll meanwhile",
			slog.String("table", s.table), slog.Any("error", err))
		select {
		case <-time.After(time.Second):
		case <-ctx.Done():
		}
	}
}

// listenOnce opens a connection, listens, calls listening, and dispatches
// notifications until the connection fails or ctx ends.
func (s *Store) listenOnce(ctx context.Context, listening func()) error {
	conn, err := pgx.ConnectConfig(ctx, s.pool.Config().ConnConfig.Copy())
	if err != nil {
		return err
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = conn.Close(closeCtx)
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{s.channel}.Sanitize()); err != nil {
		return err
	}
	listening()
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		s.wake(n.Payload)
	}
}

// setListening records whether the connection listens (err nil) and wakes
// every waiter when that changes: a waiter may have missed its
// notification while the connection was down.
func (s *Store) setListening(err error, first *bool) {
	l := &s.listener
	l.mu.Lock()
	defer l.mu.Unlock()
	l.err = err
	if *first {
		*first = false
		close(l.ready)
	}
	for _, set := range l.waiters {
		for ch := range set {
			notify(ch)
		}
	}
}

func (s *Store) wake(key string) {
	l := &s.listener
	l.mu.Lock()
	defer l.mu.Unlock()
	for ch := range l.waiters[key] {
		notify(ch)
	}
}

func (s *Store) addWaiter(key string, ch chan struct{}) {
	l := &s.listener
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.waiters == nil {
		l.waiters = make(map[string]map[chan struct{}]struct{})
	}
	set := l.waiters[key]
	if set == nil {
		set = make(map[chan struct{}]struct{})
		l.waiters[key] = set
	}
	set[ch] = struct{}{}
}

func (s *Store) removeWaiter(key string, ch chan struct{}) {
	l := &s.listener
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.waiters[key], ch)
	if len(l.waiters[key]) == 0 {
		delete(l.waiters, key)
	}
}

// notify wakes ch without blocking; a pending wake-up is enough.
func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
