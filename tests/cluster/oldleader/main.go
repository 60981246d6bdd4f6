// oldleader stands in for an nfs-subdir-external-provisioner pod in the cluster tests: it takes
// part in leader election exactly as that provisioner's library (sig-storage-lib-external-
// provisioner v6) does, with client-go's own leaderelection package on an "endpoints" lock
// named after the provisioner ("/" replaced by "-"), 15 s lease, 10 s renew deadline, 2 s
// retry. It provisions nothing: it prints "leading" when it holds the lock and exits when it
// loses it, as the library does. SIGTERM stops it without releasing the lock (the library does
// not release either), so the record expires like a killed pod's.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig file")
	namespace := flag.String("namespace", "default", "namespace of the lock")
	provisioner := flag.String("provisioner", "fuseim.pri/ifs", "provisioner name")
	identity := flag.String("identity", "", "holder identity")
	flag.Parse()

	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fmt.Fprintf(os.Stderr, "oldleader: %v\n", err)
		os.Exit(2)
	}
	client := kubernetes.NewForConfigOrDie(config)
	lock, err := resourcelock.New("endpoints", *namespace,
		strings.Replace(*provisioner, "/", "-", -1),
		client.CoreV1(), nil, resourcelock.ResourceLockConfig{Identity: *identity})
	if err != nil {
		fmt.Fprintf(os.Stderr, "oldleader: %v\n", err)
		os.Exit(2)
	}
	ctx, cancel := context.WithCancel(context.Background())
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-signals
		fmt.Println("stopping without release")
		os.Exit(0)
	}()
	leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
		Lock:          lock,
		LeaseDuration: 15 * time.Second,
		RenewDeadline: 10 * time.Second,
		RetryPeriod:   2 * time.Second,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(context.Context) {
				fmt.Println("leading")
			},
			OnStoppedLeading: func() {
				fmt.Println("leaderelection lost")
				cancel()
				os.Exit(1)
			},
		},
	})
}
