package idempotency

import (
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// TestLogLimiter checks that warnings about responses that were not stored
// are bounded: one line per route and reason per minute, with the count
// of those left out, and a bounded number of lines however many routes.
func TestLogLimiter(t *testing.T) {
	t.Parallel()
	var l logLimiter
	minute := int64(time.Minute)
	lines := 0
	for i := range 1000 {
		if _, ok := l.admit("POST /charges", ReasonNotJSON, int64(i)*int64(time.Millisecond)); ok {
			lines++
		}
	}
	assert.Equal(t, 1, lines, "one line in the first minute")
	n, ok := l.admit("POST /charges", ReasonNotJSON, minute+1)
	assert.True(t, ok, "a line in the next minute")
	assert.Equal(t, 999, n, "left out before it")
	_, ok = l.admit("POST /charges", ReasonPanic, minute+2)
	assert.True(t, ok, "another reason has its own line")

	lines = 0
	for i := range 10 * limiterMax {
		if _, ok := l.admit("POST /orders/"+strconv.Itoa(i), ReasonNotJSON, 2*minute); ok {
			lines++
		}
	}
	assert.LessOrEqual(t, lines, limiterMax+1, "routes with IDs in them")
	assert.LessOrEqual(t, len(l.seen), limiterMax+1)
}
