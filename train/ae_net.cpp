#include "train/ae_net.h"

#include "kernels/common/error.h"

namespace kvcal {

std::vector<at::Tensor> ae_net::params() const {
  std::vector<at::Tensor> p = {We, be, Wd, bd};
  if (mlp) p.insert(p.end(), {E1, c1, E2, D1, c2, D2});
  return p;
}

void ae_net::set_params(const std::vector<at::Tensor>& p) {
  We = p[0], be = p[1], Wd = p[2], bd = p[3];
  if (mlp) E1 = p[4], c1 = p[5], E2 = p[6], D1 = p[7], c2 = p[8], D2 = p[9];
}

ae_net ae_net::clone() const {
  ae_net n = *this;
  std::vector<at::Tensor> p;
  for (const auto& t : params()) p.push_back(t.detach().clone());
  n.set_params(p);
  return n;
}

at::Tensor ae_net::encode(const at::Tensor& x_in, at::ScalarType compute) const {
  auto c = [&](const at::Tensor& t) { return t.to(compute); };
  const at::Tensor x = c(x_in);
  at::Tensor z = at::baddbmm(c(be).unsqueeze(1), x, c(We).transpose(1, 2));
  if (mlp)
    z = z + at::bmm(at::gelu(at::baddbmm(c(c1).unsqueeze(1), x, c(E1).transpose(1, 2))),
                    c(E2).transpose(1, 2));
  return z;
}

at::Tensor ae_net::decode(const at::Tensor& z_in, at::ScalarType compute) const {
  auto c = [&](const at::Tensor& t) { return t.to(compute); };
  const at::Tensor z = c(z_in);
  at::Tensor y = at::baddbmm(c(bd).unsqueeze(1), z, c(Wd).transpose(1, 2));
  if (mlp)
    y = y + at::bmm(at::gelu(at::baddbmm(c(c2).unsqueeze(1), z, c(D1).transpose(1, 2))),
                    c(D2).transpose(1, 2));
  return y.to(at::kFloat);
}

at::Tensor ae_net::forward(const at::Tensor& x, at::ScalarType compute) const {
  return decode(encode(x, compute), compute);
}

ae_net ae_net_from_file(const safetensors_file& f, const std::string& prefix) {
  auto get = [&](const std::string& name) {
    const tensor_view* t = f.find(prefix + name);
    KVCAL_CHECK(t != nullptr, f.path(), ": no tensor '", prefix + name, "'");
    const std::vector<float> v = to_float(*t);
    std::vector<std::int64_t> shape = {1};
    shape.insert(shape.end(), t->shape.begin(), t->shape.end());
    return at::tensor(v, at::kFloat).view(shape).clone();
  };
  ae_net n;
  n.We = get("encoder.weight");
  n.be = get("encoder.bias");
  n.Wd = get("decoder.weight");
  n.bd = get("decoder.bias");
  n.mlp = f.find(prefix + "encoder.mlp.fc1.weight") != nullptr;
  if (n.mlp) {
    n.E1 = get("encoder.mlp.fc1.weight");
    n.c1 = get("encoder.mlp.fc1.bias");
    n.E2 = get("encoder.mlp.fc2.weight");
    n.D1 = get("decoder.mlp.fc1.weight");
    n.c2 = get("decoder.mlp.fc1.bias");
    n.D2 = get("decoder.mlp.fc2.weight");
  }
  return n;
}

}  // namespace kvcal
