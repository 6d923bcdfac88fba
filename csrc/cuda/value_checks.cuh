// Value checks on the GPU (common/checks.h): each pending predicate becomes a one-thread
// kernel on the current stream that asserts it on the device, so no kernel launched after
// it reads values that failed a check, and the host never waits for the answer.
#pragma once
#include "common/checks.h"

namespace dse::cuda {

// Launches the device-side assertion of every check (each `ok` a 0-dim bool on the
// current device). A failing check prints its message from the device and makes the
// next synchronisation raise "device-side assert triggered".
void enforce_on_device(const PendingChecks& checks);

}  // namespace dse::cuda
