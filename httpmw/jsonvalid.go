package httpmw

import (
	"encoding/binary"
	"math/bits"
)

// maxJSONDepth is the deepest nesting of arrays and objects that
// encoding/json accepts. Deeper bodies are invalid here too, so that which
// responses are stored does not depend on the validator.
const maxJSONDepth = 10000

// spaceMask has a bit set for each byte that JSON treats as white space:
// space, tab, line feed and carriage return, nothing else.
const spaceMask = 1<<' ' | 1<<'\t' | 1<<'\n' | 1<<'\r'

// Constants for testing eight string bytes at once.
const (
	lowBits  = 0x0101010101010101
	highBits = 0x8080808080808080
)

// validJSON reports whether b is exactly one JSON value (RFC 8259),
// optionally surrounded by white space. Its answer is that of
// [encoding/json.Valid] for every input, including the cases where the
// grammar alone would say otherwise: bytes that are not valid UTF-8 are
// accepted inside strings, and nesting deeper than encoding/json's limit of
// 10000 levels is rejected.
//
// It walks the body once without recursion and does not allocate unless the
// nesting is deeper than 256 levels. It is safe for concurrent use.
func validJSON(b []byte) bool {
	// One bit per open array or object, set for an object. The first 256
	// levels fit in this array, which stays on the stack; only unusually
	// deep bodies grow the slice onto the heap.
	var small [4]uint64
	stack := small[:]
	depth := 0
	inObject := false // the innermost open container is an object
	i := 0
	for {
		i = skipSpace(b, i)
		if i >= len(b) {
			return false
		}
		// The loop starts over after an opening bracket or a comma, so in
		// an object it is always at a member name.
		if inObject {
			if b[i] != '"' {
				return false
			}
			if i = scanString(b, i+1); i < 0 {
				return false
			}
			i = skipSpace(b, i)
			if i >= len(b) || b[i] != ':' {
				return false
			}
			if i = skipSpace(b, i+1); i >= len(b) {
				return false
			}
		}

		switch c := b[i]; c {
		case '{', '[':
			if depth == maxJSONDepth {
				return false
			}
			w, bit := depth/64, uint64(1)<<(depth%64)
			if w == len(stack) {
				stack = append(stack, 0)
			}
			inObject = c == '{'
			if inObject {
				stack[w] |= bit
			} else {
				stack[w] &^= bit
			}
			depth++
			i = skipSpace(b, i+1)
			// An empty container ends right away: the loop below closes it.
			if i < len(b) && b[i] == c+2 { // '}' is '{'+2, ']' is '['+2
				break
			}
			continue
		case '"':
			if i = scanString(b, i+1); i < 0 {
				return false
			}
		case 't':
			if len(b)-i < 4 || string(b[i:i+4]) != "true" {
				return false
			}
			i += 4
		case 'f':
			if len(b)-i < 5 || string(b[i:i+5]) != "false" {
				return false
			}
			i += 5
		case 'n':
			if len(b)-i < 4 || string(b[i:i+4]) != "null" {
				return false
			}
			i += 4
		default:
			if i = scanNumber(b, i); i < 0 {
				return false
			}
		}

		// A value ended: close what it ends, up to a comma that starts the
		// next value, or the end of the body.
		for {
			if depth == 0 {
				return skipSpace(b, i) == len(b)
			}
			i = skipSpace(b, i)
			if i >= len(b) {
				return false
			}
			c := b[i]
			i++
			if c == ',' {
				break
			}
			if inObject && c != '}' || !inObject && c != ']' {
				return false
			}
			depth--
			inObject = depth > 0 && stack[(depth-1)/64]>>((depth-1)%64)&1 != 0
		}
	}
}

// skipSpace returns the index of the first byte at or after i that is not
// JSON white space.
func skipSpace(b []byte, i int) int {
	for i < len(b) && b[i] <= ' ' && spaceMask>>b[i]&1 != 0 {
		i++
	}
	return i
}

// scanString checks the rest of a string whose opening quote is just
// before i, and returns the index after its closing quote, or -1.
func scanString(b []byte, i int) int {
	for {
		// Most string bytes need no attention: find the next quote,
		// backslash or control character eight bytes at a time. Any other
		// byte, including one that is not valid UTF-8, is accepted as it is.
		if len(b)-i >= 8 {
			x := binary.LittleEndian.Uint64(b[i:])
			quote := x ^ (lowBits * '"')
			slash := x ^ (lowBits * '\\')
			// A byte's high bit in m is set when the byte is below 0x20 or
			// is a quote or a backslash, and clear for every byte with its
			// own high bit set. Borrows only carry upwards, so the lowest
			// bit set marks a true match even if higher ones do not.
			m := ((x - lowBits*0x20) | (quote - lowBits) | (slash - lowBits)) &^ x & highBits
			if m == 0 {
				i += 8
				continue
			}
			i += bits.TrailingZeros64(m) / 8
		} else {
			for i < len(b) && b[i] >= 0x20 && b[i] != '"' && b[i] != '\\' {
				i++
			}
			if i >= len(b) {
				return -1
			}
		}
		switch b[i] {
		case '"':
			return i + 1
		case '\\':
			if i = scanEscape(b, i+1); i < 0 {
				return -1
			}
		default:
			return -1
		}
	}
}

// scanEscape checks an escape sequence whose backslash is just before i,
// and returns the index after it, or -1.
func scanEscape(b []byte, i int) int {
	if i >= len(b) {
		return -1
	}
	switch b[i] {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		return i + 1
	case 'u':
		if len(b)-i < 5 {
			return -1
		}
		for _, c := range b[i+1 : i+5] {
			if !isHex(c) {
				return -1
			}
		}
		return i + 5
	}
	return -1
}

// scanNumber checks a number that starts at i, and returns the index after
// it, or -1. What follows the number is left to the caller: "01" is the
// number 0 followed by a byte that cannot follow a value.
func scanNumber(b []byte, i int) int {
	if b[i] == '-' {
		i++
		if i >= len(b) {
			return -1
		}
	}
	switch c := b[i]; {
	case c == '0':
		i++
	case c-'1' < 9:
		i = skipDigits(b, i+1)
	default:
		return -1
	}
	if i < len(b) && b[i] == '.' {
		start := i + 1
		if i = skipDigits(b, start); i == start {
			return -1
		}
	}
	if i < len(b) && b[i]|0x20 == 'e' {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		start := i
		if i = skipDigits(b, start); i == start {
			return -1
		}
	}
	return i
}

// skipDigits returns the index of the first byte at or after i that is not
// a decimal digit.
func skipDigits(b []byte, i int) int {
	for i < len(b) && b[i]-'0' < 10 {
		i++
	}
	return i
}

// isHex reports whether c is a hexadecimal digit, in either case.
func isHex(c byte) bool {
	lower := c | 0x20
	return '0' <= c && c <= '9' || 'a' <= lower && lower <= 'f'
}
