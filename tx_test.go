package idempotency_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemkey/idempotency"
	"github.com/idemkey/idempotency/store/memory"
)

// binderStore is a memory store with a transaction binding whose
// completion answers what the test says.
type binderStore struct {
	*memory.Store
	began       bool  // whether the handler "began" a transaction
	completeErr error // what CompleteTx answers
	calls       []string
}

type ctxMarker struct{}

func (s *binderStore) BindTx(ctx context.Context, key, token string) (context.Context, idempotency.TxCompleter) {
	s.calls = append(s.calls, "bind")
	return context.WithValue(ctx, ctxMarker{}, token), s
}

func (s *binderStore) CompleteTx(_ context.Context, record []byte, expiry time.Duration) (bool, error) {
	s.calls = append(s.calls, "completeTx")
	return s.began, s.completeErr
}

func (s *binderStore) RollbackTx(context.Context) error {
	s.calls = append(s.calls, "rollbackTx")
	return nil
}

func (s *binderStore) Complete(ctx context.Context, key, token string, record []byte, expiry time.Duration) error {
	s.calls = append(s.calls, "complete")
	return s.Store.Complete(ctx, key, token, record, expiry)
}

func (s *binderStore) Release(ctx context.Context, key, token string) error {
	s.calls = append(s.calls, "release")
	return s.Store.Release(ctx, key, token)
}

func TestExecutionTx(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		began       bool
		completeErr error
		release     bool // the response is not stored
		wantCalls   []string
		wantErr     error
		wantReplay  bool
	}{
		{name: "no transaction begun", wantCalls: []string{"bind", "completeTx", "complete"}, wantReplay: true},
		{name: "committed", began: true, wantCalls: []string{"bind", "completeTx"}},
		{name: "lease lost", began: true, completeErr: idempotency.ErrNotHeld,
			wantCalls: []string{"bind", "completeTx"}, wantErr: idempotency.ErrNotCommitted},
		{name: "commit failed", began: true, completeErr: errors.New("connection reset"),
			wantCalls: []string{"bind", "completeTx", "release"}, wantErr: idempotency.ErrNotCommitted},
		{name: "not stored", began: true, release: true, wantCalls: []string{"bind", "rollbackTx", "release"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := &binderStore{Store: memory.New(), began: tt.began, completeErr: tt.completeErr}
			e := idempotency.NewEngine(s, quiet)
			req := idempotency.Request{Route: "r", Key: "k"}
			exec, _, err := e.Begin(t.Context(), req)
			require.NoError(t, err)
			ctx := exec.Context(t.Context())
			require.NotNil(t, ctx.Value(ctxMarker{}), "the handler's context carries the binding")
			assert.Equal(t, ctx, exec.Context(ctx), "bound once")
			if tt.release {
				require.NoError(t, exec.Release())
			} else {
				err = exec.Complete(&idempotency.Record{Status: 200, Body: []byte("{}")})
				if tt.wantErr != nil {
					require.ErrorIs(t, err, tt.wantErr)
					assert.ErrorIs(t, err, idempotency.ErrStoreUnavailable, "answered as a store failure")
				} else {
					require.NoError(t, err)
				}
			}
			assert.Equal(t, tt.wantCalls, s.calls)
			_, rec, _ := e.Begin(t.Context(), req)
			assert.Equal(t, tt.wantReplay, rec != nil)
		})
	}
}

// TestExecutionContextCostsNothing: without a TxBinder, the handler's
// context is the adapter's own, at no cost.
func TestExecutionContextCostsNothing(t *testing.T) {
	e := idempotency.NewEngine(memory.New(), quiet)
	exec, _, err := e.Begin(t.Context(), idempotency.Request{Route: "r", Key: "k"})
	require.NoError(t, err)
	ctx := t.Context()
	assert.Equal(t, ctx, exec.Context(ctx))
	assert.Zero(t, testing.AllocsPerRun(100, func() { _ = exec.Context(ctx) }))
	require.NoError(t, exec.Release())
}
