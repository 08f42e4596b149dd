//go:build !grpc_go_1_33
// +build !grpc_go_1_33

package main

import (
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// plaintext is the dial option for a server without TLS (presenced's
// default, on loopback). credentials/insecure is in grpc-go 1.34 and later;
// for Debian 12's grpc-go 1.33, build with -tags grpc_go_1_33
// (plaintext_grpc133.go).
func plaintext() grpc.DialOption {
	return grpc.WithTransportCredentials(insecure.NewCredentials())
}
