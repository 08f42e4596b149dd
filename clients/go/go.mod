// Go client for presenced: the generated presence.v1 stubs (presencev1) and an
// example. See README.md: with a module proxy, `go get` this module (or
// `replace` it with a checkout); offline, Debian's packages in GOPATH mode.
//
// The stubs need grpc-go >= 1.32 (SupportPackageIsVersion7) and
// protobuf-go >= 1.26; the example's plaintext dial needs
// google.golang.org/grpc/credentials/insecure, so grpc-go >= 1.34 here.
// go.sum is not committed yet: it can only be written with a module proxy,
// which the machines this is tested on do not reach (`go mod tidy` writes it).
module github.com/presenced/presenced/clients/go

go 1.19

require (
	google.golang.org/grpc v1.34.0
	google.golang.org/protobuf v1.28.1
)
