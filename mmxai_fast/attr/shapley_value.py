class ShapleyValues: pass
class ShapleyValueSampling: pass
