// Go client for presenced: the generated presence.v1 stubs (presencev1) and an
// example. Tested offline in GOPATH mode against Debian's grpc-go 1.33 and
// protobuf-go 1.28 (see test.sh); these are the minimum versions. Module
// users: `go mod tidy` fills in go.sum.
module presenced/clients/go

go 1.19

require (
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)
