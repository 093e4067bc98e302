// cimage: a copy through containers/image, the library skopeo and podman pull, push and sign with,
// for kade's supply-chain tests. Debian's skopeo 1.9 and podman 4.3 are built with sigstore signing
// and verification disabled ("Debian-local change: sigstore disabled"), so the tests drive the same
// upstream code (copy.Image under a policy.json, registries.d use-sigstore-attachments) from here.
//
//	cimage [--policy FILE] [--registries-d DIR] [--sign-key FILE --passphrase-file FILE] SRC DST
//
// SRC and DST are docker://HOST/REPO:TAG or oci:PATH:TAG; registries are reached without TLS checks.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/containers/image/v5/copy"
	"github.com/containers/image/v5/docker"
	"github.com/containers/image/v5/oci/layout"
	"github.com/containers/image/v5/signature"
	"github.com/containers/image/v5/types"
)

func parse(s string) (types.ImageReference, error) {
	switch {
	case strings.HasPrefix(s, "docker://"):
		return docker.ParseReference(strings.TrimPrefix(s, "docker:"))
	case strings.HasPrefix(s, "oci:"):
		return layout.ParseReference(strings.TrimPrefix(s, "oci:"))
	}
	return nil, fmt.Errorf("%q: expected docker://REF or oci:PATH:TAG", s)
}

func run() error {
	policyPath := flag.String("policy", "", "policy.json (default: accept anything)")
	registriesD := flag.String("registries-d", "", "registries.d folder")
	signKey := flag.String("sign-key", "", "sign with this sigstore private key")
	passphraseFile := flag.String("passphrase-file", "", "passphrase of --sign-key")
	flag.Parse()
	if flag.NArg() != 2 {
		return fmt.Errorf("usage: cimage [flags] SRC DST")
	}
	var policy *signature.Policy
	var err error
	if *policyPath != "" {
		policy, err = signature.NewPolicyFromFile(*policyPath)
	} else {
		policy = &signature.Policy{Default: []signature.PolicyRequirement{signature.NewPRInsecureAcceptAnything()}}
	}
	if err != nil {
		return err
	}
	pc, err := signature.NewPolicyContext(policy)
	if err != nil {
		return err
	}
	defer pc.Destroy()
	src, err := parse(flag.Arg(0))
	if err != nil {
		return err
	}
	dst, err := parse(flag.Arg(1))
	if err != nil {
		return err
	}
	sys := &types.SystemContext{RegistriesDirPath: *registriesD, DockerInsecureSkipTLSVerify: types.OptionalBoolTrue}
	// an OCI layout cannot hold signatures: they were checked on the way in, and are dropped there
	opts := &copy.Options{SourceCtx: sys, DestinationCtx: sys, ReportWriter: os.Stderr,
		RemoveSignatures: strings.HasPrefix(flag.Arg(1), "oci:")}
	if *signKey != "" {
		pass, err := os.ReadFile(*passphraseFile)
		if err != nil {
			return err
		}
		opts.SignBySigstorePrivateKeyFile = *signKey
		opts.SignSigstorePrivateKeyPassphrase = []byte(strings.TrimRight(string(pass), "\n"))
	}
	_, err = copy.Image(context.Background(), pc, dst, src, opts)
	return err
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "cimage:", err)
		os.Exit(1)
	}
}
