package redisstore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// leaseMargin is added to a claim's lease left before a waiter looks
	// again, so that Redis has certainly expired the claim by then.
	leaseMargin = 10 * time.Millisecond
	// healthInterval is how long the subscription may stay silent before
	// the store pings it, and then before it gives the connection up.
	healthInterval = 30 * time.Second
	// maxBackoff bounds the pause between two attempts to subscribe.
	maxBackoff = 2 * time.Second
	// subscribeWait bounds how long a waiter waits for the subscription to
	// be up before it marks its key all the same.
	subscribeWait = time.Second
	// notInFlight is the mark script's answer when the key holds no live
	// claim.
	notInFlight = -2
)

// waitState is the part of [Store] that serves [Store.Wait]; Store.mu
// guards it.
type waitState struct {
	// started is set when the subscriber goroutine has been started, by the
	// first Wait.
	started bool
	// done is closed when the subscriber goroutine has returned.
	done chan struct{}
	// pubsub is the current subscription, nil between two.
	pubsub *redis.PubSub
	// subscribed is set while Redis has confirmed the subscription and the
	// connection has not failed since.
	subscribed bool
	// everSubscribed is set once the first subscription was confirmed.
	everSubscribed bool
	// ready is closed while subscribed; a new one replaces it when the
	// subscription is lost.
	ready chan struct{}
	// waiters maps each storage key to the channels of the calls that
	// wait for it. Each channel has room for one wake-up.
	waiters map[string][]chan struct{}
	// warned is set when the loss of the subscription has been logged,
	// and cleared when it is back.
	warned bool
}

// Wait blocks until the claim on key that was in flight may have ended
// (completed, released or expired), until ctx is done (it returns ctx's
// error), or until the poll interval of [WithPollInterval] has passed. It
// returns nil as soon as it sees that the key holds no live claim, and it
// may return nil early; the caller then calls [Store.Claim] to learn what
// the key holds.
//
// A store has one pub/sub subscription, started by the first Wait and ended
// by [Store.Close], on which the complete and release scripts publish the
// keys of the claims that a waiter has marked. A Wait first makes sure that
// the subscription is up (waiting up to a second for it, after which it
// goes on without), then sends one command of its own, the mark, which also
// tells it whether the key is in flight, and is then woken by the
// subscription, by the claim's lease running out, or by the poll interval.
func (s *Store) Wait(ctx context.Context, key string) error {
	skey := s.prefix + key
	wake := make(chan struct{}, 1)
	// The waiter is registered before the subscription is known to be up
	// and before the key is marked, so that no wake-up for it can pass
	// unseen.
	ready, err := s.register(skey, wake)
	if err != nil {
		return err
	}
	defer s.unregister(skey, wake)

	timer := time.NewTimer(min(s.poll, subscribeWait))
	defer timer.Stop()
	select {
	case <-ready:
	case <-timer.C:
		// The subscription is not up (yet): mark anyway, to learn whether
		// there is anything to wait for; the timer below covers a missed
		// wake-up.
	case <-ctx.Done():
		return ctx.Err()
	case <-s.ctx.Done():
		return ErrClosed
	}
	// A wake-up that came before the mark is for an earlier claim, or it
	// comes from a resubscription: the mark script sees the key as it is now.
	select {
	case <-wake:
	default:
	}

	left, err := markScript.Run(ctx, s.client, []string{skey}).Int64()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("redisstore: wait: %w", err)
	}
	d := s.poll
	switch {
	case left == notInFlight:
		return nil
	case left >= 0:
		// Nobody publishes when a lease runs out: the waiter looks again
		// as soon as Redis has expired the claim, unless it was renewed.
		// The lease left is cut to the poll interval first, so that a TTL
		// of centuries, set by someone else, cannot overflow.
		d = min(d, time.Duration(min(left, d.Milliseconds()))*time.Millisecond+leaseMargin)
	case left < -2:
		return fmt.Errorf("redisstore: wait: %w", errBadReply)
	}
	timer.Reset(d)

	select {
	case <-wake:
		return nil
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-s.ctx.Done():
		return ErrClosed
	}
}

// register adds a waiter for skey, starting the subscriber on first use,
// and returns the channel that is closed while the subscription is up.
func (s *Store) register(skey string, wake chan struct{}) (<-chan struct{}, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	w := &s.waiting
	if !w.started {
		w.started = true
		w.done = make(chan struct{})
		w.ready = make(chan struct{})
		w.waiters = make(map[string][]chan struct{})
		go s.subscribe()
	}
	w.waiters[skey] = append(w.waiters[skey], wake)
	return w.ready, nil
}

func (s *Store) unregister(skey string, wake chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := &s.waiting
	rest := slices.DeleteFunc(w.waiters[skey], func(c chan struct{}) bool { return c == wake })
	if len(rest) == 0 {
		delete(w.waiters, skey)
	} else {
		w.waiters[skey] = rest
	}
}

// subscribe keeps the store's subscription up until the store is closed,
// and hands each wake-up to the waiters of its key.
func (s *Store) subscribe() {
	defer close(s.waiting.done)
	var (
		ps      *redis.PubSub
		pinged  bool
		backoff time.Duration
	)
	defer func() {
		if ps != nil {
			_ = ps.Close()
		}
	}()
	for {
		if ps == nil {
			// Subscribe dials and sends SUBSCRIBE; a failure shows in
			// the receive below.
			ps = s.client.Subscribe(s.ctx, s.channel)
			if !s.setPubSub(ps) {
				return
			}
		}
		msg, err := ps.ReceiveTimeout(s.ctx, healthInterval)
		if s.ctx.Err() != nil {
			return
		}
		if err != nil {
			var netErr net.Error
			if !pinged && errors.As(err, &netErr) && netErr.Timeout() {
				// Silence: a PING tells a quiet connection from a dead
				// one, which a second silence then gives up.
				pinged = true
				if ps.Ping(s.ctx) == nil {
					continue
				}
			}
			// Begin anew on a fresh connection. Messages published in
			// between are lost: waiters are woken when it is back.
			s.lost(err)
			_ = ps.Close()
			ps, pinged = nil, false
			s.setPubSub(nil)
			backoff = min(max(2*backoff, 50*time.Millisecond), maxBackoff)
			select {
			case <-s.ctx.Done():
				return
			case <-time.After(backoff):
			}
			continue
		}
		pinged = false
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" && m.Channel == s.channel {
				backoff = 0
				s.confirmed()
			}
		case *redis.Message:
			if m.Channel == s.channel {
				s.wake(m.Payload)
			}
		}
	}
}

// setPubSub records the current subscription for [Store.Close], and reports
// false, having closed ps, when the store is closed already.
func (s *Store) setPubSub(ps *redis.PubSub) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		if ps != nil {
			_ = ps.Close()
		}
		return false
	}
	s.waiting.pubsub = ps
	return true
}

// confirmed marks the subscription as up. After an outage it wakes every
// waiter, since their wake-ups may have been published meanwhile.
func (s *Store) confirmed() {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := &s.waiting
	if w.subscribed {
		return
	}
	w.subscribed = true
	close(w.ready)
	if w.warned {
		w.warned = false
		s.logger.Info("redisstore: wake-up subscription restored")
	}
	if w.everSubscribed {
		for _, waiters := range w.waiters {
			for _, c := range waiters {
				notify(c)
			}
		}
	}
	w.everSubscribed = true
}

// lost marks the subscription as down, so that new waiters wait for it to
// be back before they mark their keys.
func (s *Store) lost(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w := &s.waiting
	if w.subscribed {
		w.subscribed = false
		w.ready = make(chan struct{})
	}
	if !w.warned {
		w.warned = true
		s.logger.Warn("redisstore: wake-up subscription lost; waiting requests poll until it is back",
			"error", err)
	}
}

// wake wakes the waiters of skey.
func (s *Store) wake(skey string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.waiting.waiters[skey] {
		notify(c)
	}
}

func notify(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Close ends the store's wake-up subscription, if [Store.Wait] started one,
// and waits until its goroutine has returned. Waits in progress return
// [ErrClosed], and so do later ones; the other methods keep working. Close
// leaves the Redis client open. It is safe to call more than once.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	started, ps := s.waiting.started, s.waiting.pubsub
	s.waiting.pubsub = nil
	s.mu.Unlock()

	s.cancel()
	if ps != nil {
		// Closing the connection ends a receive in progress, which the
		// context alone does not.
		_ = ps.Close()
	}
	if started {
		<-s.waiting.done
	}
	return nil
}
