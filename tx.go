package idempotency

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// ErrNotCommitted is returned by [Execution.Complete] when the handler's
// work was done in a transaction of the store (see [TxBinder]) and that
// transaction did not commit, although the response was one to store: the
// claim was lost before it could be stored, or the commit failed. The
// handler's writes were rolled back, so its response describes work that did
// not happen: adapters answer the client with their store-unavailable error
// instead (503 / [connect.CodeUnavailable]), and the client retries with the
// same key. It matches [ErrStoreUnavailable] with [errors.Is].
var ErrNotCommitted = fmt.Errorf("%w: the handler's transaction was rolled back", ErrStoreUnavailable)

// TxBinder is an optional capability of a [Store] whose records live in a
// database that the handler writes to as well: it lets the handler's writes
// and the stored response commit in one transaction, so that they commit
// together or not at all. Package store/pgstore implements it.
//
// The engine calls BindTx for each claimed execution, when its adapter asks
// for the handler's context ([Execution.Context]). The returned context is
// the one the handler runs with; through it the store hands the handler a
// transaction, which it begins only when the handler first asks for one. A
// handler that never asks costs nothing more than with any other store.
type TxBinder interface {
	// BindTx returns ctx carrying the binding of the claim of token on key,
	// and the completer that ends that binding's transaction.
	BindTx(ctx context.Context, key, token string) (context.Context, TxCompleter)
}

// TxCompleter ends the transaction of one binding of a [TxBinder]. The
// engine calls exactly one of its methods, once, after the handler
// returned; after that, the binding hands out no transaction anymore.
type TxCompleter interface {
	// CompleteTx stores record in the transaction, as [Store.Complete]
	// would (compare-and-set on the token and the live lease, by the
	// store's clock at that moment), and commits. It reports false, and
	// does nothing else, when the handler began no transaction: the engine
	// then calls [Store.Complete]. On any error the transaction is rolled
	// back (or its commit failed): [ErrNotHeld] when the claim was no
	// longer the token's live claim.
	CompleteTx(ctx context.Context, record []byte, expiry time.Duration) (began bool, err error)
	// RollbackTx rolls the transaction back, if the handler began one. The
	// engine releases the claim afterwards.
	RollbackTx(ctx context.Context) error
}

// Context returns the context that the adapter hands to the handler: ctx
// itself, or, when the store is a [TxBinder], ctx carrying the binding
// through which the handler can get the transaction that its response is
// stored in. An adapter calls it once, before it runs the handler; later
// calls return ctx unchanged. An unprotected execution (see
// [Execution.Protected]) returns ctx.
func (x *Execution) Context(ctx context.Context) context.Context {
	if x.e.binder == nil || x.key == "" || x.tx != nil {
		return ctx
	}
	ctx, x.tx = x.e.binder.BindTx(ctx, x.key, x.token)
	return ctx
}

// completeTx stores the record in the handler's transaction and commits it,
// if the handler began one; it reports false when it did not.
func (x *Execution) completeTx(ctx context.Context, record []byte) (bool, error) {
	tx := x.tx
	x.tx = nil
	began, err := tx.CompleteTx(ctx, record, x.e.cfg.expiry)
	switch {
	case !began || err == nil:
		return began, nil
	case errors.Is(err, ErrNotHeld):
		x.e.cfg.logger.LogAttrs(ctx, slog.LevelWarn,
			"idempotency: claim lost before the response was stored; the handler's transaction was rolled back",
			slog.String("key_hash", keyHash(x.key)))
	default:
		x.e.cfg.logger.LogAttrs(ctx, slog.LevelError,
			"idempotency: storing the response in the handler's transaction failed; it was rolled back",
			slog.String("key_hash", keyHash(x.key)), slog.Any("error", err))
		_ = x.release()
	}
	return true, fmt.Errorf("%w: %w", ErrNotCommitted, err)
}

// rollbackTx rolls back the handler's transaction, if it began one, before
// the claim is released.
func (x *Execution) rollbackTx(ctx context.Context) {
	tx := x.tx
	x.tx = nil
	if err := tx.RollbackTx(ctx); err != nil {
		x.e.cfg.logger.LogAttrs(ctx, slog.LevelWarn, "idempotency: rolling back the handler's transaction failed",
			slog.String("key_hash", keyHash(x.key)), slog.Any("error", err))
	}
}
