package memory

import "fmt"

// An Option configures a [Store].
type Option interface {
	apply(*Store)
}

type optionFunc func(*Store)

func (f optionFunc) apply(s *Store) { f(s) }

// WithMaxRecords sets how many claims and completed records the store holds
// at most, together. When the store is full, a new claim makes it drop the
// entries whose lease or expiry has passed, and fails with an error wrapping
// [ErrFull] only when none is left, however many claims race for the room.
// By default, 100 000.
//
// [New] panics if n is not positive.
func WithMaxRecords(n int) Option {
	return optionFunc(func(s *Store) {
		if n <= 0 {
			panic(fmt.Sprintf("memory: WithMaxRecords(%d): the maximum must be positive", n))
		}
		s.max = int64(n)
	})
}
