//go:build grpc_go_1_33
// +build grpc_go_1_33

package main

import "google.golang.org/grpc"

// plaintext is the dial option for a server without TLS, for grpc-go 1.33
// (Debian 12's golang-google-grpc-dev), which has no credentials/insecure:
// there WithInsecure is the plaintext option, not yet deprecated (it is from
// grpc-go 1.43 on; plaintext.go is the build for those).
func plaintext() grpc.DialOption {
	return grpc.WithInsecure()
}
