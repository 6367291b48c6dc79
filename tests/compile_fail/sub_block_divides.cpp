#include <blockdiff/policy/block_shape.hpp>
blockdiff::BlockShape<32, 5> shape;  // must fail: "SubBlock must divide Block"
