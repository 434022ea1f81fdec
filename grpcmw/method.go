package grpcmw

import (
	"strings"
	"sync"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
)

// method is what the interceptors need to know about one method, looked up
// once in the protobuf registry.
type method struct {
	// safe is true for methods whose idempotency level is NO_SIDE_EFFECTS
	// or IDEMPOTENT.
	safe bool
	// output is the method's response descriptor, or nil for a method
	// the registry does not know.
	output protoreflect.MessageDescriptor
}

// methods caches the registry's answers by full method name.
type methods struct{ m sync.Map }

// lookup describes fullMethod ("/pkg.Service/Method"). A method the global
// registry does not know is not safe and has no output descriptor.
func (ms *methods) lookup(fullMethod string) *method {
	if v, ok := ms.m.Load(fullMethod); ok {
		return v.(*method)
	}
	m := &method{}
	name := strings.Replace(strings.TrimPrefix(fullMethod, "/"), "/", ".", 1)
	if d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(name)); err == nil {
		if md, ok := d.(protoreflect.MethodDescriptor); ok {
			m.output = md.Output()
			if opts, ok := md.Options().(*descriptorpb.MethodOptions); ok {
				switch opts.GetIdempotencyLevel() {
				case descriptorpb.MethodOptions_NO_SIDE_EFFECTS, descriptorpb.MethodOptions_IDEMPOTENT:
					m.safe = true
				}
			}
		}
	}
	v, _ := ms.m.LoadOrStore(fullMethod, m)
	return v.(*method)
}
