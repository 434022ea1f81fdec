package redistest

import (
	"context"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// Counter is a [redis.Hook] that counts round trips: one per command and
// one per pipeline that a client sends. Connection set-up (HELLO, AUTH,
// SELECT, READONLY and CLIENT commands, which go-redis sends on each new
// connection through the same hooks) is not counted, nor is dialling, nor
// anything sent on a pub/sub connection, which bypasses hooks. It is safe
// for concurrent use.
type Counter struct {
	mu    sync.Mutex
	names []string
}

var _ redis.Hook = (*Counter)(nil)

// NewCounter returns a [Counter] added to c's hooks.
func NewCounter(c redis.UniversalClient) *Counter {
	n := &Counter{}
	c.AddHook(n)
	return n
}

// Count returns the number of round trips counted since the last [Counter.Reset].
func (n *Counter) Count() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.names)
}

// Names returns the counted round trips in order: a command's name, or
// "pipeline(a b ...)".
func (n *Counter) Names() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.names...)
}

// Reset forgets what was counted.
func (n *Counter) Reset() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.names = nil
}

// DialHook does not count: dialling is not a round trip of the store.
func (n *Counter) DialHook(next redis.DialHook) redis.DialHook { return next }

// ProcessHook counts each command that is not connection set-up.
func (n *Counter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if !isSetup(cmd) {
			n.add(cmd.Name())
		}
		return next(ctx, cmd)
	}
}

// ProcessPipelineHook counts each pipeline that holds more than connection
// set-up.
func (n *Counter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		var names []string
		for _, cmd := range cmds {
			if !isSetup(cmd) {
				names = append(names, cmd.Name())
			}
		}
		if len(names) > 0 {
			n.add("pipeline(" + strings.Join(names, " ") + ")")
		}
		return next(ctx, cmds)
	}
}

func (n *Counter) add(name string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.names = append(n.names, name)
}

func isSetup(cmd redis.Cmder) bool {
	switch strings.ToLower(cmd.Name()) {
	case "hello", "auth", "select", "readonly", "client":
		return true
	}
	return false
}
