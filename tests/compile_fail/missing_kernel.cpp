#include <blockdiff/backend/kernel.hpp>
struct MyBackend {};
// No kernel for this backend: must fail naming what to specialise.
void f() { blockdiff::Kernel<MyBackend, blockdiff::op::Linear>::run(); }
