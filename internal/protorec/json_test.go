package protorec

import (
	"bytes"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	paymentsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/payments/v1"
	testkindsv1 "github.com/idemkey/idempotency/internal/gen/idemkey/testkinds/v1"
)

// checkMessageJSON checks AppendJSON on m against protojson: either
// it declines, leaving what dst held untouched, or protojson accepts m and
// decodes the encoder's output into a message equal to m (unknown fields
// aside, which protojson drops too). It reports whether m was encoded.
func checkMessageJSON(t *testing.T, m proto.Message) bool {
	t.Helper()
	prefix := []byte(`{"before":1}`)
	dst := append(make([]byte, 0, 16), prefix...)
	got, ok := AppendJSON(dst, m.ProtoReflect())
	if !ok {
		assert.Equal(t, prefix, got, "a declined encoding must leave dst as it was")
		return false
	}
	require.True(t, bytes.HasPrefix(got, prefix), "the encoding must be appended to dst: %s", got)
	body := got[len(prefix):]
	_, marshalErr := protojson.Marshal(m)
	require.NoError(t, marshalErr, "encoded a message that protojson rejects, as %s", body)

	decoded := m.ProtoReflect().New().Interface()
	require.NoError(t, protojson.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(body, decoded),
		"protojson cannot decode %s", body)
	want, gotMsg := canonical(t, m), canonical(t, decoded)
	if !bytes.Equal(want, gotMsg) {
		t.Errorf("protojson decodes %s\ninto  %v\nwant  %v", body,
			prototext.Format(decoded), prototext.Format(m))
	}
	return true
}

// canonical is the deterministic binary form of m without its unknown
// fields and with every NaN replaced by one NaN. proto.Equal would let NaN
// differ from itself and -0 equal 0; the binary form tells -0 from 0, and
// protojson writes every NaN as "NaN", which loses the payload.
func canonical(t *testing.T, m proto.Message) []byte {
	t.Helper()
	m = proto.Clone(m)
	if m.ProtoReflect().IsValid() {
		normalize(m.ProtoReflect())
	}
	b, err := proto.MarshalOptions{Deterministic: true, AllowPartial: true}.Marshal(m)
	require.NoError(t, err)
	return b
}

func normalize(m protoreflect.Message) {
	m.SetUnknown(nil)
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList():
			l := v.List()
			for i := range l.Len() {
				if nv, ok := normalizedValue(fd, l.Get(i)); ok {
					l.Set(i, nv)
				}
			}
		case fd.IsMap():
			mp := v.Map()
			mp.Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
				if nv, ok := normalizedValue(fd.MapValue(), v); ok {
					mp.Set(k, nv)
				}
				return true
			})
		default:
			if nv, ok := normalizedValue(fd, v); ok {
				m.Set(fd, nv)
			}
		}
		return true
	})
}

// normalizedValue returns the value that replaces v, if any.
func normalizedValue(fd protoreflect.FieldDescriptor, v protoreflect.Value) (protoreflect.Value, bool) {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		normalize(v.Message())
	case protoreflect.FloatKind:
		if math.IsNaN(v.Float()) {
			return protoreflect.ValueOfFloat32(float32(math.NaN())), true
		}
	case protoreflect.DoubleKind:
		if math.IsNaN(v.Float()) {
			return protoreflect.ValueOfFloat64(math.NaN()), true
		}
	}
	return protoreflect.Value{}, false
}

// legacyTypes builds proto2 message types at run time, for the rules that
// proto3 cannot exercise: required fields, extension ranges and groups.
func legacyTypes(t *testing.T) map[string]protoreflect.MessageType {
	t.Helper()
	opt := descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum()
	fdp := &descriptorpb.FileDescriptorProto{
		Name:    proto.String("idemkey/testlegacy/legacy.proto"),
		Package: proto.String("idemkey.testlegacy"),
		Syntax:  proto.String("proto2"),
		MessageType: []*descriptorpb.DescriptorProto{
			{
				Name: proto.String("Required"),
				Field: []*descriptorpb.FieldDescriptorProto{{
					Name: proto.String("id"), JsonName: proto.String("id"), Number: proto.Int32(1),
					Label: descriptorpb.FieldDescriptorProto_LABEL_REQUIRED.Enum(),
					Type:  descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum(),
				}},
			},
			{
				Name: proto.String("Extendable"),
				Field: []*descriptorpb.FieldDescriptorProto{{
					Name: proto.String("note"), JsonName: proto.String("note"), Number: proto.Int32(1),
					Label: opt, Type: descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum(),
				}},
				ExtensionRange: []*descriptorpb.DescriptorProto_ExtensionRange{{Start: proto.Int32(100), End: proto.Int32(200)}},
			},
			{
				Name: proto.String("WithGroup"),
				Field: []*descriptorpb.FieldDescriptorProto{{
					Name: proto.String("item"), JsonName: proto.String("item"), Number: proto.Int32(1),
					Label: opt, Type: descriptorpb.FieldDescriptorProto_TYPE_GROUP.Enum(),
					TypeName: proto.String(".idemkey.testlegacy.WithGroup.Item"),
				}},
				NestedType: []*descriptorpb.DescriptorProto{{
					Name: proto.String("Item"),
					Field: []*descriptorpb.FieldDescriptorProto{{
						Name: proto.String("n"), JsonName: proto.String("n"), Number: proto.Int32(2),
						Label: opt, Type: descriptorpb.FieldDescriptorProto_TYPE_INT32.Enum(),
					}},
				}},
			},
			{
				Name: proto.String("Plain"),
				Field: []*descriptorpb.FieldDescriptorProto{
					{
						Name: proto.String("note"), JsonName: proto.String("note"), Number: proto.Int32(1),
						Label: opt, Type: descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum(),
					},
					{
						Name: proto.String("count"), JsonName: proto.String("count"), Number: proto.Int32(2),
						Label: opt, Type: descriptorpb.FieldDescriptorProto_TYPE_INT32.Enum(),
						DefaultValue: proto.String("5"),
					},
				},
			},
		},
	}
	fd, err := protodesc.NewFile(fdp, nil)
	require.NoError(t, err)
	types := make(map[string]protoreflect.MessageType)
	for i := range fd.Messages().Len() {
		md := fd.Messages().Get(i)
		types[string(md.Name())] = dynamicpb.NewMessageType(md)
	}
	return types
}

// nestedKinds returns a chain of n messages below the top one, each in the
// child field of the one above it.
func nestedKinds(n int) *testkindsv1.Kinds {
	m := &testkindsv1.Kinds{Int32Value: int32(n)}
	for i := n - 1; i >= 0; i-- {
		m = &testkindsv1.Kinds{Int32Value: int32(i), Child: m}
	}
	return m
}

// awkwardStrings are strings that JSON must escape, or must not.
var awkwardStrings = []string{
	"", "ch_1", `"quoted"`, `back\slash`, "a/b", "</script>", "\x00\x01\x07\b\f\n\r\t\x1b\x1f\x7f",
	"\u2028\u2029", "héllo wörld", "日本語", "🎉", "\ufffd", "\uffff", "\U0010ffff",
}

func kindsWithEdges() *testkindsv1.Kinds {
	return &testkindsv1.Kinds{
		RepeatedDouble: []float64{0, math.Copysign(0, -1), 1, -1, 0.1, 1e-300, 5e-324, math.MaxFloat64, -math.MaxFloat64,
			1e21, 1e20, 1e-7, 1e-6, 123456789.125, math.NaN(), math.Inf(1), math.Inf(-1)},
		RepeatedFloat: []float32{0, float32(math.Copysign(0, -1)), 1, -1, 0.1, math.SmallestNonzeroFloat32,
			math.MaxFloat32, -math.MaxFloat32, 1e21, 1e-7, 16777217, float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))},
		RepeatedInt32:    []int32{0, -1, 1, math.MinInt32, math.MaxInt32},
		RepeatedInt64:    []int64{0, -1, 1, math.MinInt64, math.MaxInt64, 1 << 53, 1<<53 + 1},
		RepeatedUint32:   []uint32{0, 1, math.MaxUint32},
		RepeatedUint64:   []uint64{0, 1, math.MaxUint64, 1<<53 + 1},
		RepeatedSint32:   []int32{0, -1, math.MinInt32, math.MaxInt32},
		RepeatedSint64:   []int64{0, -1, math.MinInt64, math.MaxInt64},
		RepeatedFixed32:  []uint32{0, math.MaxUint32},
		RepeatedFixed64:  []uint64{0, math.MaxUint64},
		RepeatedSfixed32: []int32{0, -1, math.MinInt32, math.MaxInt32},
		RepeatedSfixed64: []int64{0, -1, math.MinInt64, math.MaxInt64},
		RepeatedBool:     []bool{true, false, true},
		RepeatedString:   awkwardStrings,
		RepeatedBytes:    [][]byte{{}, {0}, {0xff, 0xfe}, {1, 2, 3}, []byte("\xff\xfe\xfd\xfc"), bytes.Repeat([]byte{0xfb}, 100)},
		RepeatedColor:    []testkindsv1.Color{testkindsv1.Color_COLOR_UNSPECIFIED, testkindsv1.Color_COLOR_BLUE, 99, -5},
		RepeatedNested:   []*testkindsv1.Nested{{}, {Name: "a", Count: -1}, {Inner: &testkindsv1.Nested{Quoted: `"`}}},
	}
}

func TestAppendMessageJSON(t *testing.T) {
	t.Parallel()
	legacy := legacyTypes(t)
	newLegacy := func(name string, set func(m protoreflect.Message)) proto.Message {
		m := legacy[name].New()
		set(m)
		return m.Interface()
	}
	field := func(m protoreflect.Message, name protoreflect.Name) protoreflect.FieldDescriptor {
		return m.Descriptor().Fields().ByName(name)
	}
	withUnknown := &testkindsv1.Kinds{StringValue: "known"}
	withUnknown.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 999, protowire.VarintType), 7))

	allBytes := make([]byte, 256)
	for i := range allBytes {
		allBytes[i] = byte(i)
	}
	stringMap := make(map[string]string)
	for i, s := range awkwardStrings {
		stringMap[s] = awkwardStrings[len(awkwardStrings)-1-i]
	}

	tests := []struct {
		name        string
		msg         proto.Message
		wantDecline bool
		wantJSON    string // when set, the exact encoding
	}{
		{name: "empty", msg: &testkindsv1.Kinds{}, wantJSON: `{}`},
		{name: "nil message", msg: (*testkindsv1.Kinds)(nil), wantJSON: `{}`},
		{
			name:     "charge response",
			msg:      &paymentsv1.ChargeResponse{ChargeId: "ch_1", Status: "succeeded", AmountCents: 1250},
			wantJSON: `{"chargeId":"ch_1","status":"succeeded","amountCents":"1250"}`,
		},
		{
			name: "scalars at -1",
			msg: &testkindsv1.Kinds{
				DoubleValue: -1, FloatValue: -1, Int32Value: -1, Int64Value: -1, Sint32Value: -1, Sint64Value: -1,
				Sfixed32Value: -1, Sfixed64Value: -1, Uint32Value: 1, Uint64Value: 1, Fixed32Value: 1, Fixed64Value: 1,
				BoolValue: true, StringValue: "s", BytesValue: []byte("b"), Color: testkindsv1.Color_COLOR_RED,
			},
		},
		{
			name: "scalars at their maximum",
			msg: &testkindsv1.Kinds{
				DoubleValue: math.MaxFloat64, FloatValue: math.MaxFloat32, Int32Value: math.MaxInt32,
				Int64Value: math.MaxInt64, Uint32Value: math.MaxUint32, Uint64Value: math.MaxUint64,
				Sint32Value: math.MaxInt32, Sint64Value: math.MaxInt64, Fixed32Value: math.MaxUint32,
				Fixed64Value: math.MaxUint64, Sfixed32Value: math.MaxInt32, Sfixed64Value: math.MaxInt64,
			},
		},
		{
			name: "scalars at their minimum",
			msg: &testkindsv1.Kinds{
				DoubleValue: -math.MaxFloat64, FloatValue: -math.MaxFloat32, Int32Value: math.MinInt32,
				Int64Value: math.MinInt64, Sint32Value: math.MinInt32, Sint64Value: math.MinInt64,
				Sfixed32Value: math.MinInt32, Sfixed64Value: math.MinInt64,
			},
			wantJSON: `{"doubleValue":-1.7976931348623157e+308,"floatValue":-3.4028235e+38,"int32Value":-2147483648,` +
				`"int64Value":"-9223372036854775808","sint32Value":-2147483648,"sint64Value":"-9223372036854775808",` +
				`"sfixed32Value":-2147483648,"sfixed64Value":"-9223372036854775808"}`,
		},
		{name: "NaN", msg: &testkindsv1.Kinds{DoubleValue: math.NaN(), FloatValue: float32(math.NaN())}, wantJSON: `{"doubleValue":"NaN","floatValue":"NaN"}`},
		{name: "infinity", msg: &testkindsv1.Kinds{DoubleValue: math.Inf(1), FloatValue: float32(math.Inf(1))}, wantJSON: `{"doubleValue":"Infinity","floatValue":"Infinity"}`},
		{name: "minus infinity", msg: &testkindsv1.Kinds{DoubleValue: math.Inf(-1), FloatValue: float32(math.Inf(-1))}, wantJSON: `{"doubleValue":"-Infinity","floatValue":"-Infinity"}`},
		{
			name:     "minus zero",
			msg:      &testkindsv1.Kinds{DoubleValue: math.Copysign(0, -1), FloatValue: float32(math.Copysign(0, -1))},
			wantJSON: `{"doubleValue":-0,"floatValue":-0}`,
		},
		{name: "tiny double", msg: &testkindsv1.Kinds{DoubleValue: 1e-300}, wantJSON: `{"doubleValue":1e-300}`},
		{name: "denormal double", msg: &testkindsv1.Kinds{DoubleValue: 5e-324}},
		{name: "tiny float", msg: &testkindsv1.Kinds{FloatValue: math.SmallestNonzeroFloat32}, wantJSON: `{"floatValue":1e-45}`},
		{name: "large exponents", msg: &testkindsv1.Kinds{DoubleValue: 1e21, FloatValue: 1e6}, wantJSON: `{"doubleValue":1e+21,"floatValue":1e+06}`},
		{name: "float that a double would print longer", msg: &testkindsv1.Kinds{FloatValue: 0.1}, wantJSON: `{"floatValue":0.1}`},
		{name: "unicode string", msg: &testkindsv1.Kinds{StringValue: "héllo 日本語 🎉"}},
		{name: "line separators", msg: &testkindsv1.Kinds{StringValue: "\u2028\u2029"}},
		{name: "quotes and backslash", msg: &testkindsv1.Kinds{StringValue: `say "hi" \o/`}, wantJSON: `{"stringValue":"say \"hi\" \\o/"}`},
		{name: "control characters", msg: &testkindsv1.Kinds{StringValue: "\x00\x01\b\f\n\r\t\x1f\x7f"}},
		{name: "replacement character", msg: &testkindsv1.Kinds{StringValue: "\ufffd"}},
		{name: "bytes of every value", msg: &testkindsv1.Kinds{BytesValue: allBytes}},
		{name: "bytes with padding", msg: &testkindsv1.Kinds{BytesValue: []byte{0xff}, RepeatedBytes: [][]byte{{1}, {1, 2}, {1, 2, 3}}}},
		{name: "edge values in lists", msg: kindsWithEdges()},
		{name: "empty lists and maps are absent", msg: &testkindsv1.Kinds{RepeatedInt32: []int32{}, StringToString: map[string]string{}}, wantJSON: `{}`},
		{name: "known enum", msg: &testkindsv1.Kinds{Color: testkindsv1.Color_COLOR_BLUE}, wantJSON: `{"color":"COLOR_BLUE"}`},
		{name: "unknown enum number", msg: &testkindsv1.Kinds{Color: 99}, wantJSON: `{"color":99}`},
		{name: "negative unknown enum number", msg: &testkindsv1.Kinds{Color: math.MinInt32}, wantJSON: `{"color":-2147483648}`},
		{name: "empty nested message", msg: &testkindsv1.Kinds{Nested: &testkindsv1.Nested{}}, wantJSON: `{"nested":{}}`},
		{
			name: "nested messages",
			msg: &testkindsv1.Kinds{Nested: &testkindsv1.Nested{
				Name: "n", Count: 3, Color: testkindsv1.Color_COLOR_RED,
				Inner: &testkindsv1.Nested{Name: "inner", Inner: &testkindsv1.Nested{Count: -9}},
			}},
		},
		{name: "field name that needs escaping", msg: &testkindsv1.Nested{Quoted: "q"}, wantJSON: `{"quo\"ted":"q"}`},
		{
			name: "maps with every key kind",
			msg: &testkindsv1.Kinds{
				Int32ToNested: map[int32]*testkindsv1.Nested{
					0: {}, -1: {Name: "minus one"}, math.MinInt32: {Count: 1}, math.MaxInt32: {Inner: &testkindsv1.Nested{}},
				},
				Int64ToColor: map[int64]testkindsv1.Color{
					0: testkindsv1.Color_COLOR_UNSPECIFIED, math.MinInt64: testkindsv1.Color_COLOR_BLUE, math.MaxInt64: 42,
				},
				Uint32ToBytes:    map[uint32][]byte{0: {}, math.MaxUint32: allBytes},
				Uint64ToString:   map[uint64]string{0: "", math.MaxUint64: "max"},
				Sint32ToString:   map[int32]string{math.MinInt32: "min", -1: "m1", math.MaxInt32: "max"},
				Sint64ToString:   map[int64]string{math.MinInt64: "min", -1: "m1", math.MaxInt64: "max"},
				Fixed32ToString:  map[uint32]string{0: "zero", math.MaxUint32: "max"},
				Fixed64ToString:  map[uint64]string{0: "zero", math.MaxUint64: "max"},
				Sfixed32ToString: map[int32]string{math.MinInt32: "min", math.MaxInt32: "max"},
				Sfixed64ToString: map[int64]string{math.MinInt64: "min", math.MaxInt64: "max"},
				BoolToString:     map[bool]string{true: "yes", false: "no"},
				StringToNested:   map[string]*testkindsv1.Nested{"": {}, "a\"b": {Name: "x"}},
				StringToDouble:   map[string]float64{"nan": math.NaN(), "inf": math.Inf(1), "-inf": math.Inf(-1), "-0": math.Copysign(0, -1)},
			},
		},
		{name: "map keys that need escaping", msg: &testkindsv1.Kinds{StringToString: stringMap}},
		{name: "map with one bool key", msg: &testkindsv1.Kinds{BoolToString: map[bool]string{false: "no"}}, wantJSON: `{"boolToString":{"false":"no"}}`},
		{name: "oneof scalar", msg: &testkindsv1.Kinds{Choice: &testkindsv1.Kinds_ChoiceString{ChoiceString: "c"}}, wantJSON: `{"choiceString":"c"}`},
		{name: "oneof empty scalar", msg: &testkindsv1.Kinds{Choice: &testkindsv1.Kinds_ChoiceString{}}, wantJSON: `{"choiceString":""}`},
		{name: "oneof message", msg: &testkindsv1.Kinds{Choice: &testkindsv1.Kinds_ChoiceNested{ChoiceNested: &testkindsv1.Nested{Name: "n"}}}},
		{name: "oneof empty message", msg: &testkindsv1.Kinds{Choice: &testkindsv1.Kinds_ChoiceNested{ChoiceNested: &testkindsv1.Nested{}}}, wantJSON: `{"choiceNested":{}}`},
		{
			name: "optional fields at zero",
			msg: &testkindsv1.Kinds{
				OptionalInt32: proto.Int32(0), OptionalString: proto.String(""), OptionalBytes: []byte{},
				OptionalColor: testkindsv1.Color_COLOR_UNSPECIFIED.Enum(), OptionalDouble: proto.Float64(0),
			},
			wantJSON: `{"optionalInt32":0,"optionalString":"","optionalBytes":"","optionalColor":"COLOR_UNSPECIFIED","optionalDouble":0}`,
		},
		{name: "unknown fields are dropped", msg: withUnknown, wantJSON: `{"stringValue":"known"}`},
		{name: "nesting at the limit", msg: nestedKinds(maxMessageDepth)},
		{name: "google.protobuf.Empty", msg: &emptypb.Empty{}, wantJSON: `{}`},
		{
			name: "proto2 fields with presence",
			msg: newLegacy("Plain", func(m protoreflect.Message) {
				m.Set(field(m, "count"), protoreflect.ValueOfInt32(0))
				m.Set(field(m, "note"), protoreflect.ValueOfString(""))
			}),
			wantJSON: `{"note":"","count":0}`,
		},

		{name: "invalid UTF-8 in a string", msg: &testkindsv1.Kinds{StringValue: "ok\xffok"}, wantDecline: true},
		{name: "truncated UTF-8 in a string", msg: &testkindsv1.Kinds{StringValue: "\xe6\x97"}, wantDecline: true},
		{name: "surrogate half in a string", msg: &testkindsv1.Kinds{StringValue: "\xed\xa0\x80"}, wantDecline: true},
		{name: "invalid UTF-8 in a list", msg: &testkindsv1.Kinds{RepeatedString: []string{"ok", "\xc0"}}, wantDecline: true},
		{name: "invalid UTF-8 in a map key", msg: &testkindsv1.Kinds{StringToString: map[string]string{"\xff": "ok"}}, wantDecline: true},
		{name: "invalid UTF-8 in a map value", msg: &testkindsv1.Kinds{StringToString: map[string]string{"ok": "\xff"}}, wantDecline: true},
		{name: "invalid UTF-8 in a nested message", msg: &testkindsv1.Kinds{Nested: &testkindsv1.Nested{Inner: &testkindsv1.Nested{Name: "\xff"}}}, wantDecline: true},
		{name: "invalid UTF-8 in a oneof", msg: &testkindsv1.Kinds{Choice: &testkindsv1.Kinds_ChoiceString{ChoiceString: "\xff"}}, wantDecline: true},
		{name: "nesting past the limit", msg: nestedKinds(maxMessageDepth + 1), wantDecline: true},
		{name: "timestamp", msg: &testkindsv1.Kinds{StringValue: "s", Timestamp: timestamppb.New(time0)}, wantDecline: true},
		{name: "struct", msg: &testkindsv1.Kinds{Struct: &structpb.Struct{Fields: map[string]*structpb.Value{"a": structpb.NewNumberValue(1)}}}, wantDecline: true},
		{name: "any", msg: &testkindsv1.Kinds{Any: mustAny(t, &testkindsv1.Nested{Name: "n"})}, wantDecline: true},
		{name: "null value", msg: &testkindsv1.Kinds{NullValue: 1}, wantDecline: true},
		{name: "well-known type at the top", msg: wrapperspb.String("s"), wantDecline: true},
		{name: "well-known type deep down", msg: &testkindsv1.Kinds{Child: &testkindsv1.Kinds{Child: &testkindsv1.Kinds{Timestamp: &timestamppb.Timestamp{}}}}, wantDecline: true},
		{name: "required field, set", msg: newLegacy("Required", func(m protoreflect.Message) { m.Set(field(m, "id"), protoreflect.ValueOfString("x")) }), wantDecline: true},
		{name: "required field, missing", msg: newLegacy("Required", func(protoreflect.Message) {}), wantDecline: true},
		{name: "extension range", msg: newLegacy("Extendable", func(m protoreflect.Message) { m.Set(field(m, "note"), protoreflect.ValueOfString("x")) }), wantDecline: true},
		{
			name: "group",
			msg: newLegacy("WithGroup", func(m protoreflect.Message) {
				fd := field(m, "item")
				item := m.NewField(fd)
				item.Message().Set(fd.Message().Fields().ByName("n"), protoreflect.ValueOfInt32(1))
				m.Set(fd, item)
			}),
			wantDecline: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			encoded := checkMessageJSON(t, tt.msg)
			if tt.wantDecline {
				assert.False(t, encoded, "want the encoder to decline")
				return
			}
			require.True(t, encoded, "want the message encoded")
			if tt.wantJSON != "" {
				got, _ := AppendJSON(nil, tt.msg.ProtoReflect())
				assert.Equal(t, tt.wantJSON, string(got))
			}
		})
	}
}

// TestAppendMessageJSONDeclinesWhatProtojsonRejects checks the declining
// cases against protojson itself, so that a change in protojson that
// starts rejecting one of them would not go unnoticed.
func TestAppendMessageJSONDeclinesWhatProtojsonRejects(t *testing.T) {
	t.Parallel()
	for _, m := range []proto.Message{
		&testkindsv1.Kinds{StringValue: "\xff"},
		&testkindsv1.Kinds{StringToNested: map[string]*testkindsv1.Nested{"\xff": {}}},
		&testkindsv1.Kinds{Timestamp: &timestamppb.Timestamp{Seconds: math.MaxInt64}},
		&testkindsv1.Kinds{Any: &anypb.Any{TypeUrl: "type.googleapis.com/no.such.Message"}},
		&testkindsv1.Kinds{Struct: &structpb.Struct{Fields: map[string]*structpb.Value{"nan": structpb.NewNumberValue(math.NaN())}}},
	} {
		_, err := protojson.Marshal(m)
		require.Error(t, err, "protojson accepts %v", m)
		got, ok := AppendJSON([]byte("x"), m.ProtoReflect())
		assert.False(t, ok, "encoded %v, which protojson rejects", m)
		assert.Equal(t, "x", string(got))
	}
}

var time0 = time.Unix(1700000000, 5)

func mustAny(t *testing.T, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	require.NoError(t, err)
	return a
}

// FuzzMessageJSON checks AppendJSON against protojson on the
// messages that the fuzzer's bytes decode to: it declines, or protojson
// accepts the message (so a message that protojson rejects is declined)
// and decodes the encoding into an equal message. The string goes into a
// string field and a map key, where the binary decoder would have rejected
// invalid UTF-8.
func FuzzMessageJSON(f *testing.F) {
	for _, m := range []*testkindsv1.Kinds{
		{},
		{Int32Value: -1, Int64Value: math.MinInt64, Uint64Value: math.MaxUint64, DoubleValue: math.NaN(), FloatValue: 1e-45, StringValue: "\u2028\"\\"},
		kindsWithEdges(),
		benchKinds(),
		nestedKinds(3),
		{Timestamp: timestamppb.New(time0), Choice: &testkindsv1.Kinds_ChoiceString{}},
		{Int64ToColor: map[int64]testkindsv1.Color{-1: 99}, BoolToString: map[bool]string{true: ""}, OptionalBytes: []byte{}},
	} {
		b, err := proto.Marshal(m)
		require.NoError(f, err)
		f.Add(b, "")
	}
	f.Add([]byte{}, "\xff")
	f.Add([]byte{}, "\x00\"\\\u2028")
	f.Fuzz(func(t *testing.T, b []byte, s string) {
		m := new(testkindsv1.Kinds)
		if err := proto.Unmarshal(b, m); err != nil {
			t.Skip()
		}
		if s != "" {
			m.StringValue = s
			if m.StringToNested == nil {
				m.StringToNested = make(map[string]*testkindsv1.Nested)
			}
			m.StringToNested[s] = &testkindsv1.Nested{Name: s}
		}
		checkMessageJSON(t, m)
	})
}

func TestAppendMessageJSONAllocations(t *testing.T) {
	msg := &paymentsv1.ChargeResponse{ChargeId: "ch_1", Status: "succeeded", AmountCents: 1250}
	buf := make([]byte, 0, 256)
	allocs := testing.AllocsPerRun(100, func() {
		var ok bool
		buf, ok = AppendJSON(buf[:0], msg.ProtoReflect())
		if !ok {
			t.Fatal("declined")
		}
	})
	assert.Zero(t, allocs)
}

// benchKinds is a larger response that the encoder accepts: scalars,
// lists, maps and nested messages.
func benchKinds() *testkindsv1.Kinds {
	return &testkindsv1.Kinds{
		DoubleValue: 3.25, FloatValue: 1.5, Int32Value: -7, Int64Value: 1 << 40, Uint32Value: 7, Uint64Value: 1 << 50,
		BoolValue: true, StringValue: "a fairly ordinary string, with \"quotes\"", BytesValue: []byte("some bytes"),
		Color:          testkindsv1.Color_COLOR_BLUE,
		Nested:         &testkindsv1.Nested{Name: "nested", Count: 3, Color: testkindsv1.Color_COLOR_RED},
		RepeatedInt64:  []int64{1, 2, 3, 4, 5, 6, 7, 8},
		RepeatedString: []string{"alpha", "beta", "gamma", "delta"},
		RepeatedNested: []*testkindsv1.Nested{{Name: "one", Count: 1}, {Name: "two", Count: 2}},
		StringToString: map[string]string{"region": "eu-west-1", "tier": "gold", "customer": "cus_123"},
		OptionalInt32:  proto.Int32(0),
		Choice:         &testkindsv1.Kinds_ChoiceString{ChoiceString: "choice"},
	}
}

func BenchmarkMessageJSON(b *testing.B) {
	for _, bm := range []struct {
		name string
		msg  proto.Message
	}{
		{"ChargeResponse", &paymentsv1.ChargeResponse{ChargeId: "ch_1", Status: "succeeded", AmountCents: 1250}},
		{"Kinds", benchKinds()},
	} {
		if _, ok := AppendJSON(nil, bm.msg.ProtoReflect()); !ok {
			b.Fatalf("%s: declined", bm.name)
		}
		b.Run(bm.name+"/protojson.Marshal", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := protojson.Marshal(bm.msg); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(bm.name+"/protojson.MarshalAppend", func(b *testing.B) {
			b.ReportAllocs()
			buf := make([]byte, 0, 1024)
			for b.Loop() {
				var err error
				if buf, err = (protojson.MarshalOptions{}).MarshalAppend(buf[:0], bm.msg); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(bm.name+"/AppendJSON", func(b *testing.B) {
			b.ReportAllocs()
			buf := make([]byte, 0, 1024)
			for b.Loop() {
				buf, _ = AppendJSON(buf[:0], bm.msg.ProtoReflect())
			}
		})
	}
}
